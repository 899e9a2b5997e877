// Progressive enhancement only: every page works without this file.
// - marks <html> so CSS can show controls that need JavaScript (the copy buttons);
// - copies the text of the element named by data-copy to the clipboard;
// - gives every code block a copy button;
// - folds the navigation behind its menu button on narrow screens;
// - after an htmx swap, moves the focus to the element marked data-autofocus (a removed
//   button, such as a revoked key's, would otherwise leave the focus on the page body).
"use strict";
document.documentElement.classList.add("js");


function copyText(text) {
  if (navigator.clipboard && window.isSecureContext) {
    return navigator.clipboard.writeText(text);
  }
  return new Promise(function (resolve, reject) {
    const area = document.createElement("textarea");
    area.value = text;
    area.setAttribute("readonly", "");
    area.className = "offscreen";
    document.body.appendChild(area);
    area.select();
    const ok = document.execCommand("copy");
    area.remove();
    if (ok) { resolve(); } else { reject(new Error("copy refused")); }
  });
}

document.addEventListener("click", function (event) {
  const button = event.target.closest("[data-copy]");
  if (!button) { return; }
  const source = document.getElementById(button.dataset.copy);
  if (!source) { return; }
  const text = "value" in source && source.tagName !== "PRE" ? source.value : source.textContent;
  copyText(text).then(function () {
    button.textContent = document.body.dataset.copied || "Copied";
    button.classList.add("copied");
  }, function () {
    if (source.select) { source.select(); }
    button.textContent = document.body.dataset.copyFailed || "Press Ctrl+C";
  });
});

function addCopyButtons(root) {
  let n = document.querySelectorAll("pre[id^='code-']").length;
  root.querySelectorAll("pre").forEach(function (pre) {
    if (pre.closest(".command") || pre.classList.contains("mail-body") || pre.dataset.copyable) { return; }
    pre.dataset.copyable = "1";
    if (!pre.id) { n += 1; pre.id = "code-" + n; }
    const wrap = document.createElement("div");
    wrap.className = "command";
    pre.parentNode.insertBefore(wrap, pre);
    wrap.appendChild(pre);
    const button = document.createElement("button");
    button.type = "button";
    button.className = "btn btn-small copy-button";
    button.dataset.copy = pre.id;
    button.textContent = (document.body.dataset.copyLabel || "Copy");
    wrap.appendChild(button);
  });
}

function foldMenu() {
  const menu = document.querySelector("details.menu");
  if (!menu) { return; }
  const narrow = window.matchMedia("(max-width: 760px)");
  function apply() { menu.open = !narrow.matches; }
  apply();
  narrow.addEventListener("change", apply);
}

document.addEventListener("DOMContentLoaded", function () {
  addCopyButtons(document);
  foldMenu();
});

document.addEventListener("htmx:afterSettle", function (event) {
  const target = event.detail && event.detail.elt;
  const root = target && target.isConnected ? target : document;
  addCopyButtons(root);
  const focus = document.querySelector("[data-autofocus]");
  if (focus) { focus.removeAttribute("data-autofocus"); focus.focus(); }
});
