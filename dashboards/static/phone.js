/* Vigil phone pages: shrink a camera photo in the browser before sending; find the resident's location;
   keep a responder's view of where the wearer is current (#live-position: its JSON, same origin, every
   data-every seconds while the page is visible; only that block changes, so a note being typed stays).
   No network use beyond this same origin. */
(function () {
  "use strict";
  var MAX = 1600;
  document.querySelectorAll("input[type=file][data-photo-for]").forEach(function (input) {
    input.addEventListener("change", function () {
      var file = input.files && input.files[0];
      var target = document.getElementById(input.getAttribute("data-photo-for"));
      var preview = document.getElementById("photo-preview");
      if (!file || !target) return;
      var img = new Image();
      var url = URL.createObjectURL(file);
      img.onload = function () {
        var scale = Math.min(1, MAX / Math.max(img.width, img.height));
        var canvas = document.createElement("canvas");
        canvas.width = Math.round(img.width * scale);
        canvas.height = Math.round(img.height * scale);
        canvas.getContext("2d").drawImage(img, 0, 0, canvas.width, canvas.height);
        target.value = canvas.toDataURL("image/jpeg", 0.8);
        URL.revokeObjectURL(url);
        if (preview) { preview.src = target.value; preview.hidden = false; }
        var pick = input.closest("label.photo");  // the label is the button: say a photo is attached
        if (pick && pick.getAttribute("data-added")) {
          pick.classList.add("added");
          pick.querySelector("span").textContent = pick.getAttribute("data-added");
        }
      };
      img.onerror = function () { target.value = ""; URL.revokeObjectURL(url); };
      img.src = url;
    });
  });
  var locate = document.getElementById("locate");
  function findMe(then) {  // the report's location; then(true) once lat/lon are filled, then(false) if not
    var out = document.getElementById("located");
    function fail() { out.textContent = locate.getAttribute("data-fail"); out.classList.add("error"); then(false); }
    if (!navigator.geolocation) { fail(); return; }
    out.classList.remove("error");
    out.textContent = locate.getAttribute("data-busy") || "";
    navigator.geolocation.getCurrentPosition(function (pos) {
      document.getElementById("lat").value = pos.coords.latitude.toFixed(6);
      document.getElementById("lon").value = pos.coords.longitude.toFixed(6);
      out.textContent = locate.getAttribute("data-ok") + " " + pos.coords.latitude.toFixed(5) + ", " + pos.coords.longitude.toFixed(5);
      then(true);
    }, fail, { enableHighAccuracy: true, timeout: 10000 });
  }
  if (locate) {
    locate.addEventListener("click", function () { findMe(function () {}); });
    var report = locate.form;
    var finding = false;  // a second tap while the phone looks for the location sends nothing more
    report.addEventListener("submit", function (e) {  // sent without a location: find it first, then send
      if (document.getElementById("lat").value && document.getElementById("lon").value && !finding) return;
      e.preventDefault();
      e.stopImmediatePropagation();
      if (finding) return;
      finding = true;
      findMe(function (ok) {
        if (ok) { sending(report); report.submit(); } else { finding = false; }
      });
    });
  }
  document.querySelectorAll(".stars input[name=score]").forEach(function (input) {
    input.addEventListener("change", function () {  // 4 stars: 满意, in words beside the stars
      var label = document.querySelector("label[for='" + input.id + "']");
      var says = document.getElementById("star-says");
      if (label && says) says.textContent = input.value + " ★ " + (label.getAttribute("data-says") || "");
    });
  });
  liveposition(document.getElementById("live-position"));
  function sending(f) {  // one tap = one action: no double submit on a slow network, and it shows
    f.querySelectorAll("button[type=submit]").forEach(function (b) {
      setTimeout(function () {
        b.disabled = true;
        if (f.getAttribute("data-sending")) b.textContent = f.getAttribute("data-sending");
      }, 0);
    });
  }
  document.querySelectorAll("form").forEach(function (f) {
    f.addEventListener("submit", function () { sending(f); });
  });

  function fill(text, kw) {  // the catalogs' "{name}" placeholders
    return String(text).replace(/\{(\w+)\}/g, function (m, k) { return k in kw ? String(kw[k]) : m; });
  }

  function liveposition(box) {
    if (!box || !box.getAttribute("data-url")) return;
    var d = box.dataset, url = d.url, every = Math.max(5, +d.every || 30) * 1000;
    var timer = null, busy = false, stopped = false;
    var ageEl = document.getElementById("fix-age");
    var age = ageEl ? { s: +ageEl.getAttribute("data-age-s"), t: performance.now() } : null;
    var status = document.getElementById("position-status");
    function byId(id) { return document.getElementById(id); }
    function say(text, bad) {
      if (!status) return;
      status.textContent = text;
      status.classList.toggle("error", !!bad);
    }
    function ageText(s) {
      var m = Math.floor(s / 60);
      if (m < 1) return d.ageNow;
      if (m < 60) return fill(d.ageMin, { n: m });
      return fill(d.ageHour, { h: Math.floor(m / 60), m: m % 60 });
    }
    function showAge() {
      if (!age) return;
      var s = age.s + (performance.now() - age.t) / 1000;
      if (!ageEl) {
        ageEl = document.createElement("span");
        ageEl.id = "fix-age";
        byId("fix-time").appendChild(document.createTextNode(" · "));
        byId("fix-time").appendChild(ageEl);
      }
      ageEl.textContent = ageText(s);
      ageEl.classList.toggle("stale", s >= 600);
    }
    function render(p) {
      var where = byId("position"), lead = null, id = "away";
      where.textContent = "";
      if (p.near_home) { lead = fill(d.nearHome, { m: p.distance_m }); id = "near-home"; }
      else if (p.distance_m !== null && p.distance_m !== undefined) {
        lead = p.distance_m < 1000 ? fill(d.awayM, { m: p.distance_m })
          : fill(d.awayKm, { km: (p.distance_m / 1000).toFixed(1) });
      }
      if (lead) {
        var strong = document.createElement("strong");
        strong.id = id;
        strong.textContent = lead;
        where.appendChild(strong);
        where.appendChild(document.createElement("br"));
      }
      var coords = document.createElement("span");
      coords.id = "coords";
      coords.textContent = Number(p.lat).toFixed(6) + ", " + Number(p.lon).toFixed(6);
      where.appendChild(coords);
      byId("fix-at").textContent = String(p.at).slice(0, 19).replace("T", " ");  // already Asia/Shanghai
      if (/^https:\/\/uri\.amap\.com\//.test(p.amap_uri)) byId("map-amap").href = p.amap_uri;
      if (/^geo:/.test(p.geo_uri)) byId("map-geo").href = p.geo_uri;
      box.querySelectorAll("[hidden]").forEach(function (el) { el.hidden = false; });
      age = { s: +p.age_s || 0, t: performance.now() };
      showAge();
    }
    function stop(text) {  // the case closed or the link no longer opens: nothing of the wearer stays
      stopped = true;
      clearTimeout(timer);
      box.remove();
      document.querySelectorAll("[data-private]").forEach(function (el) { el.remove(); });
      say(text, false);
    }
    function schedule() {
      clearTimeout(timer);
      timer = null;
      if (!stopped && document.visibilityState === "visible") timer = setTimeout(refresh, every);
    }
    function refresh() {
      if (busy || stopped) return;
      busy = true;
      fetch(url, { credentials: "same-origin", cache: "no-store", headers: { Accept: "application/json" } })
        .then(function (r) {
          if (r.status === 429) throw new Error("HTTP 429");  // the link's read limit: keep it, retry next tick
          if (r.status >= 400 && r.status < 500) return stop(d.gone);
          if (!r.ok) throw new Error("HTTP " + r.status);
          return r.json().then(function (j) {
            if (!j.open) return stop(d.closed);
            if (!j.live) return stop(d.gone);
            if (j.position) render(j.position); else showAge();  // no fix (yet): keep what is shown
            if (status) say(status.getAttribute("data-live"), false);
          });
        })
        .catch(function () { showAge(); say(d.failed, true); })
        .then(function () { busy = false; schedule(); });
    }
    document.addEventListener("visibilitychange", function () {
      if (document.visibilityState === "visible") refresh(); else { clearTimeout(timer); timer = null; }
    });
    schedule();
  }
})();
