// Drives the Postern admin UI in Debian's headless Chromium through
// playwright-core (no browser download: executablePath is /usr/bin/chromium).
//
//   node admin_browser.mjs SCENARIO
//
// Environment: POSTERN_ADMIN_URL (https://127.0.0.1:PORT), POSTERN_ADMIN_PASSWORD,
// and per scenario MESSAGE_ID / CERT_NAME / DOMAIN / NEXT_HOP / NEW_PASSWORD / BANNER; optional
// POSTERN_SCREENSHOTS (a directory: a PNG per step) and CHROMIUM (binary).
//
// It prints one JSON object per line ({"event": ...}); tests/test_admin_browser.py
// reads them as they come (the SMTP check starts the moment "saved" arrives)
// and checks the rest over SMTP and with openssl. Some scenarios wait for a
// line on stdin from the test (a step done outside the browser). Exit code 0 = every step
// found what it expected; on failure the message goes to stderr.

import { mkdtempSync, rmSync } from "node:fs";
import { createInterface } from "node:readline";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { chromium } from "playwright-core";

const base = process.env.POSTERN_ADMIN_URL;
const password = process.env.POSTERN_ADMIN_PASSWORD;
const shots = process.env.POSTERN_SCREENSHOTS || "";
const scenario = process.argv[2];
const STEP_TIMEOUT = 15000;

const started = Date.now();
let lastStep = "starting node";
/// Where the scenario is, on stderr with the time since start: when a run is
/// cut off (the test's deadline, SIGTERM), the last line says where it stood.
function progress(what) {
  lastStep = what;
  process.stderr.write(`[${((Date.now() - started) / 1000).toFixed(2)}s] ${what}\n`);
}
process.on("SIGTERM", () => {
  process.stderr.write(`scenario ${scenario} stopped by SIGTERM after ${((Date.now() - started) / 1000).toFixed(1)} s, during: ${lastStep}\n`);
  process.exit(143);
});

function emit(event, data = {}) {
  process.stdout.write(JSON.stringify({ event, at: Date.now() / 1000, ...data }) + "\n");
}

function check(condition, message) {
  if (!condition) throw new Error(message);
}

let shotCount = 0;
async function shot(page, name) {
  if (!shots) return;
  shotCount += 1;
  await page.screenshot({ path: join(shots, `${String(shotCount).padStart(2, "0")}-${scenario}-${name}.png`), fullPage: true });
}

async function login(page) {
  progress("open /");
  await page.goto(base + "/");
  // Not logged in: the dashboard sends us to the login page.
  check(new URL(page.url()).pathname === "/login", `expected the login page, got ${page.url()}`);
  progress("log in with a wrong password");
  await page.getByLabel("Admin password").fill("wrong password");
  await page.getByRole("button", { name: "Log in" }).click();
  await page.getByText("Wrong password.").waitFor();
  progress("log in");
  await page.getByLabel("Admin password").fill(password);
  await page.getByRole("button", { name: "Log in" }).click();
  await page.getByRole("heading", { name: "Dashboard" }).waitFor();
  const cookies = await page.context().cookies();
  const session = cookies.find((c) => c.name === "postern_session");
  check(session && session.secure && session.httpOnly && session.sameSite === "Strict",
    `session cookie attributes: ${JSON.stringify(session)}`);
  emit("logged-in", { title: await page.title() });
  await shot(page, "dashboard");
}

/// The next line the test sends on stdin (it signals a step it did, such
/// as a password change); fails after `ms`.
const stdinLines = createInterface({ input: process.stdin });
const pendingLines = [];
const lineWaiters = [];
stdinLines.on("line", (line) => {
  const waiter = lineWaiters.shift();
  if (waiter) waiter(line); else pendingLines.push(line);
});
function nextLine(ms = 60000) {
  if (pendingLines.length) return Promise.resolve(pendingLines.shift());
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no line on stdin within ${ms} ms`)), ms);
    lineWaiters.push((line) => { clearTimeout(timer); resolve(line); });
  });
}

/// Go to a section through the navigation, as a person would.
async function open(page, link, heading) {
  progress(`open ${link}`);
  await page.getByRole("navigation").getByRole("link", { name: link }).click();
  await page.getByRole("heading", { name: heading, exact: true }).waitFor();
}

const scenarios = {
  // Open the login page, let the test change the password with `postern
  // admin passwd`, log in with the new one at once, wait past the
  // gateway's password check (every 2 s), and still be logged in.
  async "relogin-after-passwd"(page) {
    await page.goto(base + "/login");
    await page.getByLabel("Admin password").waitFor();
    emit("ready");
    const line = await nextLine();
    check(line === "changed", `unexpected signal ${line}`);
    await page.getByLabel("Admin password").fill(process.env.NEW_PASSWORD);
    await page.getByRole("button", { name: "Log in" }).click();
    await page.getByRole("heading", { name: "Dashboard" }).waitFor();
    emit("logged-in-again");
    await page.waitForTimeout(3500);
    await page.reload();
    check(new URL(page.url()).pathname === "/", `sent to ${page.url()} after the password change`);
    await page.getByRole("heading", { name: "Dashboard" }).waitFor();
    // And the session works for a section page too.
    await open(page, "TLS encryption", "TLS encryption");
    emit("still-logged-in", { path: new URL(page.url()).pathname });
    await shot(page, "still-logged-in");
  },

  async login(page) {
    await login(page);
    for (const [link, heading] of [["TLS encryption", "TLS encryption"], ["Domains", "Domains"],
      ["Advanced", "Advanced"],
      ["Certificates", "Certificates"], ["Queue", "Queue"], ["Message tracking", "Message tracking"],
      ["Cluster", "Cluster"], ["Dashboard", "Dashboard"]]) {
      await open(page, link, heading);
      await shot(page, link.replace(/ /g, "-").toLowerCase());
    }
    const cards = await page.locator(".card").count();
    check(cards >= 4, `dashboard cards: ${cards}`);
    check(await page.locator("svg.chart").count() === 1, "no chart on the dashboard");
    await page.getByRole("button", { name: "Log out" }).click();
    await page.getByLabel("Admin password").waitFor();
    await page.goto(base + "/settings/tls");
    check(new URL(page.url()).pathname === "/login", "still logged in after logout");
    emit("logged-out");
  },

  // The Cluster page of one node: every node's row as the page shows it,
  // then again after the test stopped a node (stdin "stopped").
  async cluster(page) {
    await login(page);
    await open(page, "Cluster", "Cluster");
    const rows = async () => {
      const version = (await page.locator("[data-current-version]").textContent()).trim();
      const nodes = [];
      for (const row of await page.locator("tr[data-node]").all()) {
        nodes.push({
          name: await row.getAttribute("data-node"),
          state: await row.locator("[data-state]").getAttribute("data-state"),
          applied: (await row.locator("[data-applied]").textContent()).trim(),
          fingerprints: (await row.locator("td.fingerprints code").allTextContents()).map((t) => t.trim()),
          queue: (await row.locator("[data-queue]").textContent()).trim(),
          text: (await row.textContent()).replace(/\s+/g, " ").trim(),
        });
      }
      return { version, nodes };
    };
    emit("nodes", await rows());
    await shot(page, "cluster");
    const line = await nextLine();
    check(line === "stopped", `unexpected signal ${line}`);
    await page.reload();
    await page.getByRole("heading", { name: "Cluster", exact: true }).waitFor();
    emit("nodes-after", await rows());
    await shot(page, "cluster-after");
  },

  async "tls-require"(page) {
    await login(page);
    await open(page, "TLS encryption", "TLS encryption");
    const mode = page.getByLabel("Server TLS security mode");
    const options = await mode.locator("option").allTextContents();
    check(JSON.stringify(options) === JSON.stringify(
      ["No TLS encryption", "Attempt TLS encryption", "Require TLS encryption"]),
      `server mode choices: ${options}`);
    const client = await page.getByLabel("Client TLS security mode").locator("option").allTextContents();
    check(JSON.stringify(client) === JSON.stringify(["No TLS", "Check TLS possibility",
      "Require TLS, don't verify certificate", "Require TLS and verify certificate"]),
      `client mode choices: ${client}`);
    const certRequest = await page.getByLabel("Client certificate", { exact: true }).locator("option").allTextContents();
    check(JSON.stringify(certRequest) === JSON.stringify(["Do not request", "Request", "Require"]),
      `client certificate choices: ${certRequest}`);
    check(await page.getByText(/servers that cannot do TLS can no longer send you mail/).count() === 1,
      "no warning for the strict server mode");
    check(await mode.inputValue() === "offer", "server mode is not the default");
    await mode.selectOption({ label: "Require TLS encryption" });
    await shot(page, "require-selected");
    await page.getByRole("button", { name: "Save" }).click();
    await page.getByText(/^Saved\./).waitFor();
    emit("saved", { mode: await page.getByLabel("Server TLS security mode").inputValue() });
    await shot(page, "saved");
  },

  // Settings → Integrated MTA → Advanced: a new banner, then a refused
  // combination (more connections per client than in total).
  async advanced(page) {
    await login(page);
    await open(page, "Advanced", "Advanced");
    const banner = page.getByLabel("Greeting banner");
    check(await banner.inputValue() === "", "banner not empty at first");
    const total = page.getByLabel("Connections in total");
    check(await total.inputValue() === "1000", `max_connections shown as ${await total.inputValue()}`);
    const perClient = page.getByLabel("Connections per client address");
    check(await perClient.inputValue() === "50", "per-client limit not shown");
    const sessionTimeout = page.getByLabel("Session timeout");
    check(await sessionTimeout.inputValue() === "5m", `session timeout shown as ${await sessionTimeout.inputValue()}`);
    const help = await page.locator('.field[data-key="mta.session_timeout"] .help').textContent();
    check(/Allowed: between 1s and 1h\./.test(help) && /Default: 5m\./.test(help), `session timeout help: ${help}`);
    const bannerHelp = await page.locator('.field[data-key="mta.banner"] .help').textContent();
    check(/ESMTP Postern/.test(bannerHelp) && /400/.test(bannerHelp), `banner help: ${bannerHelp}`);
    await shot(page, "advanced");

    await banner.fill(process.env.BANNER);
    await page.getByRole("button", { name: "Save" }).click();
    await page.getByText(/^Saved\./).waitFor();
    check(await page.getByLabel("Greeting banner").inputValue() === process.env.BANNER, "banner not kept");
    emit("saved", { banner: await page.getByLabel("Greeting banner").inputValue() });
    await shot(page, "saved");

    // A value the CLI refuses: refused here too, next to its field.
    await page.getByLabel("Greeting banner").fill("not applied ESMTP");
    await page.getByLabel("Connections per client address").fill("2000");
    await page.getByRole("button", { name: "Save" }).click();
    const error = page.locator('.field-error[data-field="mta.max_connections_per_client"]');
    await error.waitFor();
    const text = (await error.textContent()).trim();
    check(await page.getByText(/Not saved/).count() === 1, "no 'not saved' banner");
    // What was typed stays in the form, to be corrected.
    check(await page.getByLabel("Connections per client address").inputValue() === "2000", "typed value lost");
    emit("refused", { text });
    await shot(page, "refused");
  },

  async "cert-select"(page) {
    const name = process.env.CERT_NAME;
    await login(page);
    await open(page, "Certificates", "Certificates");
    const form = page.locator("form#generate");
    await form.getByLabel("Name", { exact: true }).fill(name);
    await form.getByLabel("Key", { exact: true }).selectOption({ label: "ECDSA P-256" });
    await form.getByLabel("Common name (CN)").fill("mx.postern.test");
    await form.getByRole("button", { name: "Generate" }).click();
    await page.getByText("Certificate generated.").waitFor();
    const row = page.locator(`tr[data-cert="${name}"]`);
    await row.waitFor();
    const fingerprint = (await row.locator("td.fingerprint").textContent()).trim();
    const key = (await row.locator("td").nth(4).textContent()).trim();
    check(/^([0-9A-F]{2}:){31}[0-9A-F]{2}$/.test(fingerprint), `fingerprint cell: ${fingerprint}`);
    check(key === "ECDSA P-256", `key cell: ${key}`);
    await shot(page, "generated");

    await open(page, "TLS encryption", "TLS encryption");
    await page.getByLabel("Certificate presented").selectOption({ label: name });
    await page.getByRole("button", { name: "Save" }).click();
    await page.getByText(/^Saved\./).waitFor();
    emit("saved", { fingerprint });

    // The table now says what uses it, and deleting it is refused.
    await open(page, "Certificates", "Certificates");
    const used = (await row.locator("td.used").textContent()).trim();
    check(used.includes("tls.inbound.certificate"), `used by: ${used}`);
    page.once("dialog", (dialog) => dialog.accept());
    await row.getByRole("button", { name: "Delete" }).click();
    await page.getByText(/is in use by tls\.inbound\.certificate/).waitFor();
    check(await page.locator(`tr[data-cert="${name}"]`).count() === 1, "deleted although in use");
    emit("delete-refused", { used });
    await shot(page, "delete-refused");
  },

  async "domain-verify"(page) {
    const domain = process.env.DOMAIN;
    await login(page);
    await open(page, "Domains", "Domains");
    const form = page.locator("form.domain");
    // A mistake first: the message appears next to the field.
    await form.getByLabel("Domain", { exact: true }).fill(domain);
    await form.getByLabel("Next hop").fill("10.0.0.5:25");
    await form.getByLabel("TLS mode for this domain").selectOption({ label: "Require TLS and verify certificate" });
    await form.getByRole("button", { name: "Add" }).click();
    const error = page.locator('.field-error[data-field="next_hop"]');
    await error.waitFor();
    const errorText = (await error.textContent()).trim();
    check(/brackets/.test(errorText), `next hop error: ${errorText}`);
    await shot(page, "next-hop-error");
    // Corrected; the other fields kept what was typed.
    check(await page.locator("form.domain").getByLabel("Domain", { exact: true }).inputValue() === domain, "name lost");
    await page.locator("form.domain").getByLabel("Next hop").fill(process.env.NEXT_HOP);
    await page.locator("form.domain").getByRole("button", { name: "Add" }).click();
    await page.getByText(/^Added\./).waitFor();
    const row = page.locator(`#domains tr[data-domain="${domain}"]`);
    await row.waitFor();
    const mode = (await row.locator("td.mode").textContent()).trim();
    check(mode === "Require TLS and verify certificate", `listed mode: ${mode}`);
    emit("listed", { domain, mode, row: (await row.textContent()).replace(/\s+/g, " ").trim() });
    await shot(page, "listed");
  },

  async tracking(page) {
    const messageId = process.env.MESSAGE_ID;
    await login(page);
    await open(page, "Message tracking", "Message tracking");
    await page.getByLabel("Message-ID / queue id / text").fill(messageId);
    await page.getByRole("button", { name: "Search" }).click();
    const rows = page.locator("#messages tbody tr");
    await rows.first().waitFor();
    check(await rows.count() === 1, `search rows: ${await rows.count()}`);
    const status = (await rows.first().locator("td").nth(6).textContent()).trim();
    await shot(page, "search");
    await rows.first().getByRole("link").click();
    await page.locator("ol.hops li.hop").first().waitFor();
    const hops = [];
    for (const hop of await page.locator("ol.hops li.hop").all()) {
      hops.push({
        title: (await hop.locator("h3").textContent()).replace(/\s+/g, " ").trim(),
        tls_version: (await hop.locator("dd.tls-version").textContent()).trim(),
        cipher: (await hop.locator("dd.cipher").textContent()).trim(),
        verification: (await hop.locator("dd.verification").textContent()).trim(),
        requirement: await optionalText(hop.locator("dd.requirement")),
        verdict: await optionalText(hop.locator("dd.verdict")),
        result_type: await optionalText(hop.locator("dd.result-type")),
      });
    }
    emit("detail", { status, hops });
    await shot(page, "detail");
  },

  // Outbound policies (learned TLS levels): two learned domains, filter
  // down to one, pin it, then forget the other.
  async policies(page) {
    await login(page);
    await open(page, "Outbound policies", "Outbound policies");
    const rows = page.locator("#policies tbody tr");
    await rows.first().waitFor();
    const listed = [];
    for (const row of await rows.all()) {
      listed.push({ domain: await row.getAttribute("data-domain"), level: await row.getAttribute("data-level"),
        evidence: (await row.locator("td.evidence").textContent()).replace(/\s+/g, " ").trim() });
    }
    emit("listed", { rows: listed });
    await shot(page, "list");
    await page.getByLabel("Domain or MX host").fill("partner");
    await page.getByRole("button", { name: "Filter" }).click();
    await page.waitForURL(/q=partner/);
    const filtered = await page.locator("#policies tbody tr").evaluateAll((trs) => trs.map((tr) => tr.dataset.domain));
    emit("filtered", { domains: filtered });
    page.once("dialog", (dialog) => dialog.accept());
    await page.locator('#policies tr[data-domain="partner.test"]').getByRole("button", { name: "Pin" }).click();
    await page.getByText("Pinned: the learned level is now a [[domain]] rule").waitFor();
    emit("pinned");
    await open(page, "Domains", "Domains");
    const mode = (await page.locator('#domains tr[data-domain="partner.test"] td.mode').textContent()).trim();
    emit("domain-rule", { mode });
    await shot(page, "pinned-rule");
    await open(page, "Outbound policies", "Outbound policies");
    page.once("dialog", (dialog) => dialog.accept());
    await page.locator('#policies tr[data-domain="other.test"]').getByRole("button", { name: "Forget" }).click();
    await page.getByText("Forgotten.").waitFor();
    const left = await page.locator("#policies tbody tr").evaluateAll((trs) => trs.map((tr) => tr.dataset.domain));
    emit("forgotten", { domains: left });
    await shot(page, "forgotten");
  },

  // Alerts (tests/test_alerts_page.py): the Dashboard banner, the Alerts
  // page and its filter, acknowledge one, then all shown: the banner goes.
  // Then the Domains form of DOMAIN saved as it is (mta_sts stays off).
  async alerts(page) {
    await login(page);
    const banner = page.locator("#alert-banner");
    emit("banner", { count: await banner.getAttribute("data-unacknowledged"), text: await optionalText(banner) });
    await banner.getByRole("link", { name: "Review and acknowledge on the Alerts page" }).click();
    await page.getByRole("heading", { name: "Alerts" }).waitFor();
    const rows = async () => page.locator("#alerts tbody tr").evaluateAll((trs) => trs.map((tr) => ({
      id: tr.dataset.id, kind: tr.dataset.kind, acknowledged: tr.dataset.acknowledged,
      subject: tr.querySelector("td.subject").textContent.trim(), host: tr.querySelector("td.host").textContent.trim(),
      node: tr.querySelector("td.node").textContent.trim(), todo: tr.querySelector(".todo").textContent.trim(),
      ack: tr.querySelector("td.ack").textContent.replace(/\s+/g, " ").trim() })));
    emit("listed", { rows: await rows() });
    await shot(page, "alerts");
    await page.getByLabel("Kind").selectOption("downgrade");
    await page.getByLabel("Acknowledged").selectOption("");
    await page.getByRole("button", { name: "Filter" }).click();
    await page.waitForURL(/kind=downgrade/);
    emit("filtered", { rows: await rows() });
    await page.locator("#alerts tbody tr").first().getByRole("button", { name: "Acknowledge" }).click();
    await page.getByText("Acknowledged.", { exact: true }).waitFor();
    check(/kind=downgrade/.test(page.url()), `the filter is kept: ${page.url()}`);
    emit("acknowledged-one", { rows: await rows() });
    await open(page, "Dashboard", "Dashboard");
    emit("banner-after-one", { count: await page.locator("#alert-banner").getAttribute("data-unacknowledged") });
    await open(page, "Alerts", "Alerts");
    page.once("dialog", (dialog) => dialog.accept());
    await page.getByRole("button", { name: "Acknowledge all shown" }).click();
    await page.getByText("Acknowledged.", { exact: true }).waitFor();
    emit("acknowledged-all", { rows: await rows(), buttons: await page.getByRole("button", { name: /Acknowledge/ }).count() });
    await shot(page, "acknowledged");
    await open(page, "Dashboard", "Dashboard");
    emit("banner-after-all", { banners: await page.locator("#alert-banner").count() });
    await open(page, "Domains", "Domains");
    await page.locator(`#domains tr[data-domain="${process.env.DOMAIN}"]`).getByRole("link", { name: "Edit" }).click();
    const box = page.getByLabel("Honour this domain's MTA-STS policy");
    emit("domain-form", { mta_sts: await box.isChecked(), dane: await page.getByLabel("Honour this domain's DANE (TLSA) records").isChecked() });
    await page.getByRole("button", { name: "Save" }).click();
    await page.getByText("Updated.").waitFor();
    emit("domain-saved");
  },

  // Outbound policies: the MTA-STS cache and DANE status sections, and the
  // filter over them (tests/test_alerts_page.py).
  async "policy-sources"(page) {
    await login(page);
    await open(page, "Outbound policies", "Outbound policies");
    const table = async (id, cells) => page.locator(`#${id} tbody tr`).evaluateAll((trs, cells) => trs.map((tr) => {
      const row = { ...tr.dataset };
      for (const c of cells) row[c] = tr.querySelector(`td.${c}`).textContent.replace(/\s+/g, " ").trim();
      return row;
    }), cells);
    emit("listed", { mta_sts: await table("mta-sts", ["mode", "max-age", "mx", "policy-id"]),
      dane: await table("dane", ["host", "usage", "verdict", "tlsa"]) });
    await shot(page, "sources");
    await page.getByLabel("Domain or MX host").fill("mx.ee");
    await page.getByRole("button", { name: "Filter" }).click();
    await page.waitForURL(/q=mx.ee/);
    emit("filtered", { mta_sts: await page.locator("#mta-sts tbody tr").count(),
      dane: await page.locator("#dane tbody tr").evaluateAll((trs) => trs.map((tr) => tr.dataset.domain)) });
  },
};

/** The trimmed text of an element that may be absent (null then). */
async function optionalText(locator) {
  return (await locator.count()) ? (await locator.first().textContent()).replace(/\s+/g, " ").trim() : null;
}

async function main() {
  check(base && password, "POSTERN_ADMIN_URL and POSTERN_ADMIN_PASSWORD must be set");
  const run = scenarios[scenario];
  check(run, `unknown scenario ${scenario}; known: ${Object.keys(scenarios).join(", ")}`);
  const profile = mkdtempSync(join(tmpdir(), "postern-chromium-"));
  progress("launch Chromium");
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    headless: true,
    ignoreHTTPSErrors: true, // the admin listener's certificate is self-signed
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync"],
    timeout: 60000,
  });
  const page = context.pages()[0] || await context.newPage();
  emit("launched", { seconds: (Date.now() - started) / 1000 });
  progress(`scenario ${scenario}`);
  page.setDefaultTimeout(STEP_TIMEOUT);
  const errors = [];
  page.on("pageerror", (e) => errors.push(String(e)));
  // Script errors and blocked resources (CSP) fail the run; an expected
  // error status (401 for a wrong password) does not.
  page.on("console", (m) => {
    if (m.type() === "error" && !/^Failed to load resource: the server responded with a status of (401|404|409|422)/.test(m.text())) {
      errors.push(m.text());
    }
  });
  try {
    await run(page);
    check(errors.length === 0, `browser errors: ${errors.join(" | ")}`);
    emit("done");
  } catch (e) {
    await shot(page, "failure").catch(() => {});
    process.stderr.write(`scenario ${scenario} failed at ${page.url()}: ${e.stack || e}\n`);
    process.exitCode = 1;
  } finally {
    stdinLines.close();
    await context.close().catch(() => {});
    rmSync(profile, { recursive: true, force: true });
  }
}

main().catch((e) => {
  process.stderr.write(`${e.stack || e}\n`);
  process.exit(1);
});
