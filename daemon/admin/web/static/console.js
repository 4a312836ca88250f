// Live parts: every element with data-part is fetched again from /part/<name> every
// data-every seconds and swapped in. A part holding the field being typed in is left alone.
(function () {
  "use strict";
  var live = document.getElementById("live");

  function typing(el) {
    var active = document.activeElement;
    return active && el.contains(active) && (active.tagName === "INPUT" || active.tagName === "TEXTAREA");
  }

  function schedule(el) {
    var seconds = parseFloat(el.dataset.every) || 2;
    window.setTimeout(function () { refresh(el); }, seconds * 1000);
  }

  function refresh(el) {
    if (typing(el)) { schedule(el); return; }
    var url = "/part/" + el.dataset.part + (el.dataset.query ? "?" + el.dataset.query : "");
    fetch(url, { credentials: "same-origin", headers: { "Accept": "text/html" } })
      .then(function (r) {
        if (r.status === 401) { window.location = "/login?next=" + encodeURIComponent(window.location.pathname); return null; }
        return r.ok ? r.text() : null;
      })
      .then(function (html) {
        if (html === null) { if (live) { live.textContent = "stale"; live.className = "stale"; } return; }
        if (!typing(el)) { el.innerHTML = html; }
        if (live) { live.textContent = "live " + new Date().toLocaleTimeString(); live.className = ""; }
      })
      .catch(function () { if (live) { live.textContent = "offline"; live.className = "stale"; } })
      .then(function () { schedule(el); });
  }

  document.querySelectorAll("[data-part]").forEach(schedule);
})();
