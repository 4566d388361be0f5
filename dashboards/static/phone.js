/* Vigil phone pages: shrink a camera photo in the browser before sending; find the resident's location.
   No network use beyond the form post to this same origin. */
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
      };
      img.onerror = function () { target.value = ""; URL.revokeObjectURL(url); };
      img.src = url;
    });
  });
  var locate = document.getElementById("locate");
  if (locate) {
    locate.addEventListener("click", function () {
      var out = document.getElementById("located");
      if (!navigator.geolocation) { out.textContent = locate.getAttribute("data-fail"); return; }
      navigator.geolocation.getCurrentPosition(function (pos) {
        document.getElementById("lat").value = pos.coords.latitude.toFixed(6);
        document.getElementById("lon").value = pos.coords.longitude.toFixed(6);
        out.textContent = locate.getAttribute("data-ok") + " " + pos.coords.latitude.toFixed(5) + ", " + pos.coords.longitude.toFixed(5);
      }, function () { out.textContent = locate.getAttribute("data-fail"); }, { enableHighAccuracy: true, timeout: 10000 });
    });
  }
  document.querySelectorAll("form").forEach(function (f) {
    f.addEventListener("submit", function () {  // one tap = one action: no double submit on a slow network
      f.querySelectorAll("button[type=submit]").forEach(function (b) { setTimeout(function () { b.disabled = true; }, 0); });
    });
  });
})();
