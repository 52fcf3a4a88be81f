// flow web view: live updates of a run's page (server-sent events), picking the step to
// restart from on the graph, and confirming actions. No framework, no network but this
// server.
(function () {
  "use strict";
  var KEY = "flowToken";
  // The token: from the URL's fragment (`flowctl serve` prints such a link; the fragment is
  // never sent to the server), or typed in the box; kept for this tab only.
  var hash = new URLSearchParams(location.hash.slice(1));
  if (hash.get("token")) {
    sessionStorage.setItem(KEY, hash.get("token"));
    history.replaceState(null, "", location.pathname + location.search);
  }
  var box = document.getElementById("token-box");
  if (box) {
    box.value = sessionStorage.getItem(KEY) || "";
    box.addEventListener("input", function () { sessionStorage.setItem(KEY, box.value); });
  }

  // Actions: confirmed in a dialog, then sent with the token and confirm=yes.
  document.querySelectorAll("form[data-confirm]").forEach(function (form) {
    form.addEventListener("submit", function (e) {
      var msg = form.getAttribute("data-confirm");
      if (form.step) {
        if (!form.step.value) { e.preventDefault(); alert("Pick a step first (click it on the graph)."); return; }
        msg += " " + form.step.value + "?";
      }
      if (!window.confirm(msg)) { e.preventDefault(); return; }
      form.querySelector("input[name=confirm]").value = "yes";
      form.querySelector("input[name=token]").value = box ? box.value : (sessionStorage.getItem(KEY) || "");
    });
  });

  // Restart from: click a step on the graph.
  var live = document.getElementById("live");
  var pick = document.getElementById("restart-step");
  function mark() {
    if (!live) return;
    live.querySelectorAll("g.node").forEach(function (n) {
      n.classList.toggle("selected", !!pick && n.getAttribute("data-key") === pick.value);
    });
  }
  if (live && pick) {
    live.addEventListener("click", function (e) {
      var node = e.target.closest && e.target.closest("g.node.pickable");
      if (!node) return;
      pick.value = node.getAttribute("data-key");
      mark();
    });
    live.addEventListener("keydown", function (e) {
      if (e.key !== "Enter") return;
      var node = e.target.closest && e.target.closest("g.node.pickable");
      if (node) { pick.value = node.getAttribute("data-key"); mark(); }
    });
    pick.addEventListener("change", mark);
  }

  // Live: the server sends the live part of the page, rendered, when the run changed.
  var banner = document.getElementById("store-state");
  function say(text) {
    if (!banner) return;
    banner.textContent = text || "";
    banner.hidden = !text;
  }
  if (live && live.getAttribute("data-events") && window.EventSource) {
    var events = new EventSource(live.getAttribute("data-events"));
    events.addEventListener("update", function (e) {
      live.innerHTML = e.data;
      live.setAttribute("data-updated", String(Date.now()));
      mark();
      say("");
    });
    events.addEventListener("store", function (e) { say("store unavailable: " + e.data); });
    events.onerror = function () { say("connection to the web view lost; retrying"); };
    events.onopen = function () { say(""); };
  }
})();
