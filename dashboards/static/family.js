/* Vigil console: the "显示号码" button of a wristband case's family contact block (admin / dispatcher).
   The full number comes from the console's own POST route (never in a URL), is shown as a tel: link for
   data-reveal-seconds, then masked again. The cloud records each reveal in the audit log. */
(function () {
  "use strict";
  var box = document.getElementById("family");
  var btn = document.getElementById("family-reveal-btn");
  var status = document.getElementById("family-status");
  if (!box || !btn || !status) return;
  var seconds = parseInt(box.getAttribute("data-reveal-seconds"), 10) || 60;
  var ticker = null;

  function phones() { return box.querySelectorAll(".family-phone"); }

  function mask() {
    if (ticker) { clearInterval(ticker); ticker = null; }
    phones().forEach(function (span) {
      span.textContent = span.getAttribute("data-masked");
    });
    status.textContent = "";
    btn.disabled = false;
    btn.hidden = false;
  }

  function show(contacts, secs) {
    var byDevice = {};
    contacts.forEach(function (c) { byDevice[c.device_id] = c.phone; });
    box.querySelectorAll("li[data-device]").forEach(function (li) {
      var phone = byDevice[li.getAttribute("data-device")];
      var span = li.querySelector(".family-phone");
      if (!phone || !span) return;
      var a = document.createElement("a");
      a.href = "tel:" + phone.replace(/[^0-9+]/g, "");
      a.className = "tel";
      a.textContent = phone;
      span.textContent = "";
      span.appendChild(a);
    });
    btn.hidden = true;
    var left = secs;
    var tpl = status.getAttribute("data-countdown");
    status.textContent = tpl.replace("{n}", String(left));
    ticker = setInterval(function () {
      left -= 1;
      if (left <= 0) { mask(); return; }
      status.textContent = tpl.replace("{n}", String(left));
    }, 1000);
  }

  btn.addEventListener("click", function () {
    btn.disabled = true;
    fetch(box.getAttribute("data-reveal-url"), {
      method: "POST",
      credentials: "same-origin",
      cache: "no-store",
      headers: { "Accept": "application/json" }
    }).then(function (r) {
      if (!r.ok) throw new Error(String(r.status));
      return r.json();
    }).then(function (data) {
      show(data.contacts || [], data.seconds || seconds);
    }).catch(function () {
      btn.disabled = false;
      status.textContent = status.getAttribute("data-failed");
    });
  });
})();
