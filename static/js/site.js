// Progressive enhancement only: every page works without this file.
// - marks <html> so CSS can show controls that need JavaScript (the copy button);
// - copies the text of the element named by data-copy to the clipboard.
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
  const text = "value" in source ? source.value : source.textContent;
  copyText(text).then(function () {
    button.textContent = "Copied";
    button.classList.add("copied");
  }, function () {
    if (source.select) { source.select(); }
    button.textContent = "Press Ctrl+C";
  });
});
