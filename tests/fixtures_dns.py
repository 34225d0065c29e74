"""A real DNS server on loopback for delivery tests (`dns_server` fixture).

Serves one zone, given as a dict, over UDP and TCP on the same random free
port of 127.0.0.1, from background threads (dnslib).  Postern is pointed at it
with `[dns] nameservers = ["127.0.0.1:PORT"]` (`server.nameserver`).

Zone format (names case-insensitive, trailing dot optional)::

    {
        "partner.test":     {"MX": [(10, "mx1.partner.test"), "20 mx2.partner.test"]},
        "mx1.partner.test": {"A": "127.0.0.3"},            # str or list
        "mx2.partner.test": {"A": ["127.0.0.4"], "AAAA": ["::1"]},
        "nullmx.test":      {"MX": [(0, ".")]},            # RFC 7505 null MX
        "spf.test":         {"TXT": ["v=spf1 -all"]},      # one str = one record
        "alias.test":       {"CNAME": "mx1.partner.test"},
        "broken.test":      {"rcode": "SERVFAIL"},         # any RCODE name
        "silent.test":      {"drop": True},                # never answered
        "_25._tcp.mx1.partner.test": {"TLSA": [(3, 1, 1, "ab12..."), "2 1 1 cd34..."],
                                      "authenticated": True},
    }

DNSSEC, as a validating resolver reports it: a name marked
`"authenticated": True` gets the AD bit in its answers (records or NODATA)
only when the query asked for it with AD or the EDNS DO bit (RFC 6840 §5.7,
RFC 4035 §3.2.3), and only when every name of a CNAME chain is marked.
Unmarked names, NXDOMAIN answers and queries that ask for neither never get
AD. No RRSIG is ever served: the zone stays unsigned, so a resolver that
validates itself finds no chain to the root. `flags` records (name, type,
asked_for_ad) for every question.

Answers are authoritative with TTL `ttl` (default 0, so a resolver cache never
hides a flip).  A name absent from the zone (and not a parent of a name in it)
gets NXDOMAIN; a present name without the asked type gets NOERROR/NODATA.
Both negative answers carry an SOA (minimum = `ttl`) so negative caching is
bounded too.  The server is authoritative for every name: names outside the
test domains are NXDOMAIN as well, never forwarded anywhere.

`truncate_udp` (True, or a size in bytes) sets TC on UDP answers (always, or
when larger than that size) so a client has to retry over TCP; `queries`
records (name, type, "udp"/"tcp") for every question received.
"""

from __future__ import annotations

import collections
import socket
import socketserver
import struct
import threading
import time
from typing import Any

import pytest
from dnslib import AAAA, CNAME, MX, QTYPE, RCODE, RR, SOA, TLSA, TXT, A, DNSRecord

Zone = dict[str, dict[str, Any]]

SUPPORTED_TYPES = ("A", "AAAA", "MX", "TXT", "CNAME", "TLSA")
_MAX_CNAME_CHAIN = 8
_TCP_IDLE_TIMEOUT = 10.0       # seconds a TCP client may stay idle
_TCP_MAX_QUERIES = 1000        # per TCP connection


def _norm(name: str) -> str:
    name = name.strip().lower().rstrip(".")
    return name


def _as_list(value: Any) -> list:
    if value is None:
        return []
    if isinstance(value, (list, tuple)) and not (
        len(value) == 2 and isinstance(value[0], int)  # a single (pref, host) MX pair
    ):
        return list(value)
    return [value]


def _normalize_entry(name: str, entry: dict[str, Any]) -> dict[str, Any]:
    """Validate one name's records and bring them to a canonical shape."""
    out: dict[str, Any] = {}
    for key, value in entry.items():
        k = key.upper() if key.upper() in SUPPORTED_TYPES else key.lower()
        if k == "MX":
            mxs = []
            for item in _as_list(value):
                if isinstance(item, str):
                    pref_s, host = item.split(None, 1)
                    item = (int(pref_s), host)
                pref, host = item
                mxs.append((int(pref), "." if host.strip() in (".", "") else _norm(host)))
            out["MX"] = mxs
        elif k in ("A", "AAAA"):
            fam = socket.AF_INET if k == "A" else socket.AF_INET6
            addrs = []
            for a in _as_list(value):
                socket.inet_pton(fam, a)  # raises on a bad address
                addrs.append(a)
            out[k] = addrs
        elif k == "TXT":
            out["TXT"] = [v if isinstance(v, (str, bytes)) else list(v) for v in _as_list(value)]
        elif k == "CNAME":
            if not isinstance(value, str):
                raise ValueError(f"{name}: CNAME takes one target name")
            out["CNAME"] = _norm(value)
        elif k == "rcode":
            if str(value).upper() not in RCODE.reverse:
                raise ValueError(f"{name}: unknown rcode {value!r}")
            out["rcode"] = str(value).upper()
        elif k == "drop":
            out["drop"] = bool(value)
        elif k == "TLSA":
            records = []
            for item in _as_list(value):
                if isinstance(item, str):
                    usage, selector, matching, data = item.split(None, 3)
                    item = (usage, selector, matching, data)
                usage, selector, matching, data = item
                if isinstance(data, str):
                    data = bytes.fromhex("".join(data.split()))
                records.append((int(usage), int(selector), int(matching), bytes(data)))
            out["TLSA"] = records
        elif k == "authenticated":
            out["authenticated"] = bool(value)
        else:
            raise ValueError(f"{name}: unsupported record type {key!r} "
                             f"(supported: {SUPPORTED_TYPES}, rcode, drop, authenticated)")
    if "CNAME" in out and any(t in out for t in ("A", "AAAA", "MX", "TXT", "TLSA")):
        raise ValueError(f"{name}: CNAME cannot coexist with other data")
    return out


def _txt_rdata(value) -> TXT:
    """One TXT record; a long str is split into 255-byte character-strings."""
    if isinstance(value, list):
        return TXT([v.encode() if isinstance(v, str) else v for v in value])
    data = value.encode() if isinstance(value, str) else value
    chunks = [data[i:i + 255] for i in range(0, len(data), 255)] or [b""]
    return TXT(chunks)


class _Handler(socketserver.BaseRequestHandler):
    server: Any

    def handle(self) -> None:
        dns: DnsServer = self.server.dns
        if self.server.socket_type == socket.SOCK_STREAM:
            self._handle_tcp(dns)
        else:
            data, sock = self.request
            reply = dns._answer(data, "udp")
            if reply is not None:
                sock.sendto(reply, self.client_address)

    def _handle_tcp(self, dns: "DnsServer") -> None:
        conn: socket.socket = self.request
        conn.settimeout(_TCP_IDLE_TIMEOUT)
        buf = b""
        for _ in range(_TCP_MAX_QUERIES):
            while len(buf) < 2 or len(buf) < 2 + struct.unpack("!H", buf[:2])[0]:
                try:
                    chunk = conn.recv(65536)
                except (socket.timeout, OSError):
                    return
                if not chunk:
                    return
                buf += chunk
            n = struct.unpack("!H", buf[:2])[0]
            msg, buf = buf[2:2 + n], buf[2 + n:]
            reply = dns._answer(msg, "tcp")
            if reply is None:
                continue
            try:
                conn.sendall(struct.pack("!H", len(reply)) + reply)
            except OSError:
                return


class _UDPServer(socketserver.ThreadingMixIn, socketserver.UDPServer):
    daemon_threads = True
    allow_reuse_address = False


class _TCPServer(socketserver.ThreadingMixIn, socketserver.TCPServer):
    daemon_threads = True
    allow_reuse_address = True


class DnsServer:
    """Authoritative test DNS server on `host`, UDP and TCP on one port."""

    def __init__(self, zone: Zone | None = None, *, host: str = "127.0.0.1", port: int = 0,
                 ttl: int = 0, truncate_udp: bool | int = False, tcp: bool = True):
        self.host = host
        self.ttl = ttl
        self.truncate_udp = truncate_udp
        self.queries: collections.deque[tuple[str, str, str]] = collections.deque(maxlen=10000)
        self.flags: collections.deque[tuple[str, str, bool]] = collections.deque(maxlen=10000)
        self._lock = threading.Lock()
        self._records: dict[str, dict[str, Any]] = {}
        self._threads: list[threading.Thread] = []
        self._udp, self._tcp = self._bind(host, port, tcp)
        self.port: int = self._udp.server_address[1]
        if zone:
            self.set_records(zone)

    # -- zone editing -------------------------------------------------------

    def set_records(self, zone: Zone) -> None:
        """Replace the whole zone."""
        new = {_norm(n): _normalize_entry(n, e) for n, e in zone.items()}
        with self._lock:
            self._records = new

    def update(self, zone: Zone) -> None:
        """Merge: each given name gets exactly the records given for it."""
        new = {_norm(n): _normalize_entry(n, e) for n, e in zone.items()}
        with self._lock:
            self._records.update(new)

    def set(self, name: str, rtype: str, value: Any) -> None:
        """Set (or with value None, remove) one type of one name."""
        name = _norm(name)
        with self._lock:
            entry = dict(self._records.get(name, {}))
            key = rtype.upper() if rtype.upper() in SUPPORTED_TYPES else rtype.lower()
            entry.pop(key, None)
            if value is not None:
                entry.update(_normalize_entry(name, {key: value}))
            if entry:
                self._records[name] = _normalize_entry(name, entry)
            else:
                self._records.pop(name, None)

    def remove(self, name: str) -> None:
        """Remove a name entirely (it then gets NXDOMAIN)."""
        with self._lock:
            self._records.pop(_norm(name), None)

    def records(self) -> dict[str, dict[str, Any]]:
        with self._lock:
            return {n: dict(e) for n, e in self._records.items()}

    @property
    def nameserver(self) -> str:
        """The value for Postern's `[dns] nameservers` list."""
        return f"{self.host}:{self.port}"

    def queries_for(self, name: str, rtype: str | None = None) -> list[tuple[str, str, str]]:
        name = _norm(name)
        return [q for q in list(self.queries) if q[0] == name and (rtype is None or q[1] == rtype.upper())]

    # -- lifecycle ----------------------------------------------------------

    @staticmethod
    def _bind(host: str, port: int, tcp: bool):
        last: Exception | None = None
        for _ in range(50):
            udp = _UDPServer((host, port), _Handler)
            if not tcp:
                return udp, None
            try:
                tcps = _TCPServer((host, udp.server_address[1]), _Handler)
                return udp, tcps
            except OSError as e:  # the port is free for UDP but not for TCP
                udp.server_close()
                last = e
                if port:
                    break
        raise RuntimeError(f"no port free for both UDP and TCP on {host}: {last}")

    def start(self) -> "DnsServer":
        for srv in (self._udp, self._tcp):
            if srv is None:
                continue
            srv.dns = self
            t = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.1},
                                 name=f"dns-{srv.socket_type}-{self.port}", daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def stop(self) -> None:
        for srv in (self._udp, self._tcp):
            if srv is None:
                continue
            if self._threads:
                srv.shutdown()
            srv.server_close()
        for t in self._threads:
            t.join(timeout=5)
        self._threads = []

    def __enter__(self) -> "DnsServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- answering ----------------------------------------------------------

    def _lookup(self, name: str) -> dict[str, Any] | None:
        with self._lock:
            return self._records.get(name)

    def _exists(self, name: str) -> bool:
        if not name:  # the root always exists (a DNSSEC probe asks for its DNSKEY)
            return True
        with self._lock:
            if name in self._records:
                return True
            suffix = "." + name
            return any(n.endswith(suffix) for n in self._records)

    def _soa(self, qname: str) -> RR:
        labels = qname.split(".")
        apex = ".".join(labels[-2:]) if len(labels) >= 2 else qname
        # The root's owner is "." (an empty label would not encode).
        owner, host = (apex + ".", apex) if apex else (".", "root.test")
        return RR(owner, QTYPE.SOA, ttl=self.ttl,
                  rdata=SOA(f"ns.{host}.", f"hostmaster.{host}.", (1, 60, 60, 600, self.ttl)))

    def _rrs(self, name: str, entry: dict[str, Any], qtype: str) -> list[RR]:
        owner = name + "."
        out: list[RR] = []
        if qtype in ("A", "ANY"):
            out += [RR(owner, QTYPE.A, ttl=self.ttl, rdata=A(a)) for a in entry.get("A", [])]
        if qtype in ("AAAA", "ANY"):
            out += [RR(owner, QTYPE.AAAA, ttl=self.ttl, rdata=AAAA(a)) for a in entry.get("AAAA", [])]
        if qtype in ("MX", "ANY"):
            out += [RR(owner, QTYPE.MX, ttl=self.ttl,
                       rdata=MX("." if h == "." else h + ".", p)) for p, h in entry.get("MX", [])]
        if qtype in ("TXT", "ANY"):
            out += [RR(owner, QTYPE.TXT, ttl=self.ttl, rdata=_txt_rdata(t)) for t in entry.get("TXT", [])]
        if qtype in ("TLSA", "ANY"):
            out += [RR(owner, QTYPE.TLSA, ttl=self.ttl, rdata=TLSA(u, s, m, d))
                    for u, s, m, d in entry.get("TLSA", [])]
        if qtype in ("CNAME", "ANY") and "CNAME" in entry:
            out.append(RR(owner, QTYPE.CNAME, ttl=self.ttl, rdata=CNAME(entry["CNAME"] + ".")))
        return out

    def _answer(self, data: bytes, proto: str) -> bytes | None:
        try:
            request = DNSRecord.parse(data)
        except Exception:
            return None
        reply = request.reply()  # id, rd and the question copied; qr, aa, ra set
        reply.header.ad = 0
        reply.header.cd = 0
        if not request.questions:
            reply.header.rcode = RCODE.FORMERR
            return reply.pack()
        q = request.q
        qname = _norm(str(q.qname))
        try:
            qtype = QTYPE[q.qtype]
        except Exception:
            qtype = str(q.qtype)
        self.queries.append((qname, qtype, proto))
        asked_for_ad = bool(request.header.ad) or _dnssec_ok(request)
        self.flags.append((qname, qtype, asked_for_ad))

        name = qname
        authentic = True
        for _ in range(_MAX_CNAME_CHAIN):
            entry = self._lookup(name)
            authentic = authentic and bool(entry and entry.get("authenticated"))
            if entry is None:
                if not self._exists(name):
                    reply.header.rcode = RCODE.NXDOMAIN
                reply.add_auth(self._soa(name))
                break
            if entry.get("drop"):
                return None
            if "rcode" in entry:
                reply.header.rcode = getattr(RCODE, entry["rcode"])
                break
            rrs = self._rrs(name, entry, qtype)
            for rr in rrs:
                reply.add_answer(rr)
            if "CNAME" in entry and qtype not in ("CNAME", "ANY"):
                reply.add_answer(*self._rrs(name, entry, "CNAME"))
                name = entry["CNAME"]
                continue
            if not rrs:
                reply.add_auth(self._soa(name))
            break

        if asked_for_ad and authentic and reply.header.rcode == RCODE.NOERROR:
            reply.header.ad = 1
        packed = reply.pack()
        if proto == "udp" and self.truncate_udp:
            limit = 0 if self.truncate_udp is True else int(self.truncate_udp)
            if len(packed) > limit:
                reply.rr, reply.auth, reply.ar = [], [], []
                reply.header.tc = 1
                packed = reply.pack()
        return packed


def _dnssec_ok(request: DNSRecord) -> bool:
    """The EDNS DO bit (RFC 3225): bit 15 of the OPT record's TTL field."""
    return any(rr.rtype == QTYPE.OPT and (rr.ttl & 0x8000) for rr in request.ar)


def wait_ready(server: DnsServer, timeout: float = 2.0) -> None:
    """Wait (bounded) until the server answers a UDP query."""
    deadline = time.monotonic() + timeout
    q = DNSRecord.question("ready.invalid", "A").pack()
    while time.monotonic() < deadline:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(0.2)
            try:
                s.sendto(q, (server.host, server.port))
                s.recvfrom(4096)
                return
            except OSError:
                pass
    raise TimeoutError(f"DNS server on {server.nameserver} did not answer")


def query(server: DnsServer, name: str, rtype: str = "A", tcp: bool = False,
          timeout: float = 2.0) -> DNSRecord:
    """Ask the server one question with dnslib's client; returns the parsed reply."""
    q = DNSRecord.question(name, rtype)
    raw = q.send(server.host, server.port, tcp=tcp, timeout=timeout)
    return DNSRecord.parse(raw)


@pytest.fixture
def dns_server():
    """A running DnsServer with an empty zone; call .set_records({...})."""
    server = DnsServer().start()
    wait_ready(server)
    try:
        yield server
    finally:
        server.stop()


__all__ = ["DnsServer", "Zone", "dns_server", "query", "wait_ready"]
