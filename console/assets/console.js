// The Admin Console's own script: small, no framework. Served from this server only (the
// content security policy allows no inline script).
(function () {
  "use strict";

  function csrfToken() {
    var meta = document.querySelector('meta[name="csrf-token"]');
    return meta ? meta.getAttribute("content") : "";
  }

  // Every htmx request carries the session's CSRF token.
  document.addEventListener("htmx:configRequest", function (e) {
    e.detail.headers["x-csrf-token"] = csrfToken();
  });

  // <form data-confirm="..."> and <button data-confirm="..."> ask before they submit.
  document.addEventListener("submit", function (e) {
    var form = e.target;
    var submitter = e.submitter;
    var message = (submitter && submitter.getAttribute("data-confirm")) || form.getAttribute("data-confirm");
    if (message && !window.confirm(message)) {
      e.preventDefault();
      e.stopImmediatePropagation();
    }
  }, true);

  // <button data-copy="element-id"> copies that element's text.
  document.addEventListener("click", function (e) {
    var button = e.target.closest("[data-copy]");
    if (!button) return;
    var source = document.getElementById(button.getAttribute("data-copy"));
    if (!source) return;
    var text = source.value !== undefined && source.tagName === "INPUT" ? source.value : source.textContent;
    navigator.clipboard.writeText(text).then(function () {
      var label = button.textContent;
      button.textContent = "Copied";
      setTimeout(function () { button.textContent = label; }, 1500);
    });
  });

  // <input type="checkbox" data-select-all="name"> toggles every visible checkbox named `name`.
  document.addEventListener("change", function (e) {
    var all = e.target.closest("[data-select-all]");
    if (!all) return;
    var name = all.getAttribute("data-select-all");
    document.querySelectorAll('input[type="checkbox"][name="' + name + '"]').forEach(function (box) {
      if (!box.disabled && box.offsetParent !== null) box.checked = all.checked;
    });
  });

  // <input data-filter="table-id"> hides rows of that table whose text does not match.
  document.addEventListener("input", function (e) {
    var input = e.target.closest("[data-filter]");
    if (!input) return;
    var table = document.getElementById(input.getAttribute("data-filter"));
    if (!table) return;
    var q = input.value.trim().toLowerCase();
    table.querySelectorAll("tbody tr").forEach(function (row) {
      row.hidden = q !== "" && row.textContent.toLowerCase().indexOf(q) === -1;
    });
  });
  // <input data-filter-rows="table-id" data-filter-key="model"> hides rows of that table whose
  // data-<key> does not contain the input's text; several such inputs on one table combine.
  document.addEventListener("input", function (e) {
    var input = e.target.closest("[data-filter-rows]");
    if (!input) return;
    var tableId = input.getAttribute("data-filter-rows");
    var table = document.getElementById(tableId);
    if (!table) return;
    var filters = document.querySelectorAll('[data-filter-rows="' + tableId + '"]');
    table.querySelectorAll("tbody tr").forEach(function (row) {
      var shown = true;
      filters.forEach(function (f) {
        var q = f.value.trim().toLowerCase();
        var v = row.getAttribute("data-" + f.getAttribute("data-filter-key")) || "";
        if (q !== "" && v.indexOf(q) === -1) shown = false;
      });
      row.hidden = !shown;
    });
  });
})();
