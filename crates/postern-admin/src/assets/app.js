// Postern admin: the only script. Asks before destructive form posts
// (forms carrying data-confirm). Pages work without it.
"use strict";
document.addEventListener("submit", function (event) {
  var form = event.target;
  var question = form && form.getAttribute && form.getAttribute("data-confirm");
  if (question && !window.confirm(question)) {
    event.preventDefault();
  }
});
