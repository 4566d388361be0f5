/* Vigil console: live queue over server-sent events, community map from local GeoJSON, alarm cues.
   Served by the cloud itself; talks only to its own origin. */
(function () {
  "use strict";
  var body = document.body;
  var queue = document.getElementById("queue");
  var live = document.getElementById("live");
  var baseTitle = document.title;
  var knownHigh = null;
  var flashTimer = null;

  // ---- an action that cannot be taken back asks first (data-confirm on the button or the form) ---------
  // Without JavaScript the form still posts: the cloud's own checks (reason, role, stale page) stay.
  document.addEventListener("submit", function (ev) {
    var btn = ev.submitter;
    var ask = (btn && btn.getAttribute("data-confirm")) || ev.target.getAttribute("data-confirm");
    if (ask && !window.confirm(ask)) ev.preventDefault();
  }, true);

  function highIds() {
    var table = document.getElementById("incident-table") || document.getElementById("queue-table");
    var raw = table ? table.getAttribute("data-high") : "";
    return raw ? raw.split(" ").filter(Boolean) : [];
  }

  // Browsers start audio only after a user gesture on the page: the first click or key unlocks it.
  var audio = null;
  function unlockAudio() {
    var Ctx = window.AudioContext || window.webkitAudioContext;
    if (!audio && Ctx) audio = new Ctx();
    if (audio && audio.state === "suspended") audio.resume();
  }
  document.addEventListener("click", unlockAudio, { once: true });
  document.addEventListener("keydown", unlockAudio, { once: true });

  function beep() {
    try {
      var Ctx = window.AudioContext || window.webkitAudioContext;
      if (!Ctx) return;
      var ctx = audio || new Ctx(), osc = ctx.createOscillator(), gain = ctx.createGain();
      osc.type = "square"; osc.frequency.value = 880; gain.gain.value = 0.08;
      osc.connect(gain); gain.connect(ctx.destination);
      osc.start(); osc.stop(ctx.currentTime + 0.35);
    } catch (e) { /* no audio device: the title still flashes */ }
  }

  function flashTitle(text) {
    var n = 0;
    if (flashTimer) clearInterval(flashTimer);
    flashTimer = setInterval(function () {
      document.title = (n % 2 === 0) ? "【" + text + "】" : baseTitle;
      n += 1;
      if (n > 20) { clearInterval(flashTimer); flashTimer = null; document.title = baseTitle; }
    }, 700);
  }

  function checkNewHigh() {
    var ids = highIds();
    if (knownHigh !== null) {
      var fresh = ids.filter(function (id) { return knownHigh.indexOf(id) < 0; });
      if (fresh.length) {
        body.setAttribute("data-alarm", fresh[0]);
        beep();
        flashTitle(queue.getAttribute("data-new-high") || "!");
      }
    }
    knownHigh = ids;
  }

  function throttle(fn, ms) {  // at most one run per ms, trailing: a stream of events never starves it
    var timer = null;
    return function () { if (!timer) timer = setTimeout(function () { timer = null; fn(); }, ms); };
  }

  var refreshQueue = throttle(function () {
    if (queue && window.htmx) window.htmx.trigger(queue, "vigil:refresh");
  }, 100);

  // ---- map ------------------------------------------------------------------------------------------
  var mapEl = document.getElementById("map");
  var map = null, cluster = null, incidentLayer = null, responderLayer = null;
  var COLORS = ["#2b8a3e", "#f08c00", "#e8590c", "#c92a2a"];

  function loadDevices() {
    if (!map) return;
    fetch(mapEl.getAttribute("data-devices"), { credentials: "same-origin" })
      .then(function (r) { return r.json(); })
      .then(function (data) {
        var markers = [];
        for (var i = 0; i < data.rows.length; i++) {
          var row = data.rows[i];
          var sev = row[4];
          var m = L.circleMarker([row[0], row[1]], {
            radius: sev > 0 ? 8 : 5, weight: 1, color: "#222",
            fillColor: row[6] ? "#868e96" : COLORS[Math.min(sev, 3)], fillOpacity: 0.9
          });
          m.options.vigilSeverity = sev;
          var a = document.createElement("a");
          a.href = body.getAttribute("data-base") + "/devices/" + encodeURIComponent(row[2]);
          a.textContent = (row[5] || row[2]);
          m.bindPopup(a);
          markers.push(m);
        }
        cluster.clearLayers();
        cluster.addLayers(markers);
        incidentLayer.clearLayers();
        (data.incidents || []).forEach(function (inc) {
          var pin = L.circleMarker([inc[0], inc[1]], { radius: 11, weight: 3, color: COLORS[Math.min(inc[3], 3)],
            fill: false, className: "incident-pin" });
          var a = document.createElement("a");
          a.href = body.getAttribute("data-base") + "/incidents/" + inc[2];
          a.textContent = "#" + inc[2] + " " + inc[4] + " · " + inc[5];
          pin.bindPopup(a);
          incidentLayer.addLayer(pin);
        });
        mapEl.setAttribute("data-incidents", String((data.incidents || []).length));
        responderLayer.clearLayers();
        (data.responders || []).forEach(function (r) {
          var m = L.circleMarker([r[0], r[1]], { radius: 5, weight: 2, color: "#1864ab", fillColor: "#74c0fc",
            fillOpacity: 1 });
          m.bindTooltip(r[3] + " · " + r[4]);
          responderLayer.addLayer(m);
        });
        mapEl.setAttribute("data-markers", String(markers.length));
      });
  }
  var refreshMap = throttle(loadDevices, 4000);  // the map is heavier than the queue: at most every few s

  if (mapEl && window.L) {
    var labels = JSON.parse(mapEl.getAttribute("data-labels") || "{}");
    map = L.map(mapEl, { preferCanvas: true, attributionControl: false, maxZoom: 20, zoomSnap: 0.5 });
    map.setView([39.96, 116.30], 15);
    cluster = L.markerClusterGroup({
      chunkedLoading: true, disableClusteringAtZoom: 19, showCoverageOnHover: false,
      iconCreateFunction: function (c) {
        var worst = 0;
        c.getAllChildMarkers().forEach(function (m) { worst = Math.max(worst, m.options.vigilSeverity || 0); });
        var size = c.getChildCount() < 100 ? "small" : (c.getChildCount() < 1000 ? "medium" : "large");
        return L.divIcon({ html: "<div><span>" + c.getChildCount() + "</span></div>",
          className: "marker-cluster marker-cluster-" + size + (worst >= 3 ? " cluster-alarm" : ""),
          iconSize: L.point(40, 40) });
      }
    });
    var streets = L.layerGroup(), grid = L.layerGroup(), buildings = L.layerGroup();
    incidentLayer = L.layerGroup();
    responderLayer = L.layerGroup();
    fetch(mapEl.getAttribute("data-community"), { credentials: "same-origin" })
      .then(function (r) { return r.json(); })
      .then(function (fc) {
        var all = L.geoJSON(fc, {
          style: function (f) {
            var layer = f.properties.layer;
            if (layer === "street") return { color: "#adb5bd", weight: 6, opacity: 0.9 };
            if (layer === "grid") return { color: "#1971c2", weight: 1, dashArray: "4 4", fill: false };
            return { color: "#868e96", weight: 1, fillColor: "#dee2e6", fillOpacity: 0.8 };
          },
          onEachFeature: function (f, layer) {
            var which = f.properties.layer;
            if (f.properties.name) layer.bindTooltip(f.properties.name);
            (which === "street" ? streets : which === "grid" ? grid : buildings).addLayer(layer);
          }
        });
        if (all.getBounds().isValid()) map.fitBounds(all.getBounds(), { padding: [10, 10] });
        mapEl.setAttribute("data-features", String(fc.features.length));
      });
    grid.addTo(map); streets.addTo(map); buildings.addTo(map); cluster.addTo(map); incidentLayer.addTo(map);
    responderLayer.addTo(map);
    var overlays = {};
    overlays[labels.grid || "grid"] = grid;
    overlays[labels.streets || "streets"] = streets;
    overlays[labels.buildings || "buildings"] = buildings;
    overlays[labels.devices || "devices"] = cluster;
    overlays[labels.incidents || "incidents"] = incidentLayer;
    overlays[labels.responders || "responders"] = responderLayer;
    // Risk hot spots (tomorrow's expected events per grid cell): off by default, fetched when first shown.
    var riskLayer = L.layerGroup(), riskLoaded = false;
    var RISK_COLORS = ["#fff3bf", "#ffd43b", "#fd7e14", "#f03e3e", "#a61e4d"];
    overlays[labels.risk || "risk"] = riskLayer;
    map.on("overlayadd", function (ev) {
      if (ev.layer !== riskLayer || riskLoaded) return;
      riskLoaded = true;
      fetch(mapEl.getAttribute("data-risk"), { credentials: "same-origin" })
        .then(function (r) { return r.json(); })
        .then(function (fc) {
          L.geoJSON(fc, {
            style: function (f) {
              var c = RISK_COLORS[f.properties.level] || RISK_COLORS[0];
              return { color: c, weight: 1, fillColor: c, fillOpacity: 0.25 + 0.1 * f.properties.level };
            },
            pointToLayer: function (f, latlng) {
              var c = RISK_COLORS[f.properties.level] || RISK_COLORS[0];
              return L.circleMarker(latlng, { radius: 14, weight: 1, color: c, fillColor: c, fillOpacity: 0.5 });
            },
            onEachFeature: function (f, layer) { layer.bindTooltip(f.properties.tooltip); }
          }).eachLayer(function (l) { riskLayer.addLayer(l); });
          mapEl.setAttribute("data-risk-cells", String(fc.features.length));
        })
        .catch(function () { riskLoaded = false; });
    });
    L.control.layers(null, overlays, { collapsed: true }).addTo(map);
    loadDevices();
    window.vigilMap = { map: map, cluster: cluster };
  }

  // ---- live stream ----------------------------------------------------------------------------------
  function setLive(on) {
    if (!live) return;
    live.className = "live " + (on ? "on" : "off");
    live.textContent = live.getAttribute(on ? "data-on" : "data-off");
  }

  if (queue && window.EventSource) {
    checkNewHigh();
    document.body.addEventListener("htmx:afterSwap", function (ev) {
      if (ev.detail && ev.detail.target === queue) checkNewHigh();
    });
    var es = new EventSource(body.getAttribute("data-events"));
    es.onopen = function () { setLive(true); refreshQueue(); };
    es.onerror = function () { setLive(false); };
    es.addEventListener("changed", function () { refreshQueue(); refreshMap(); });
  }
})();
