// The phone terminal of /remote/<id>: xterm.js joined to the gateway's hub over a WebSocket.
// Protocol (gateway/remote_hub.py): JSON frames; from the hub {"type":"output","data":B64},
// {"type":"status","bridge":bool,"viewers":n}, {"type":"status","ended":true,"reason":...},
// {"type":"pong"}; to the hub {"type":"input","data":B64}, {"type":"resize","cols","rows"},
// {"type":"ping"}. Close code 4410: the session ended or expired, so no reconnect.
"use strict";
(function () {
  const box = document.getElementById("terminal");
  if (!box || typeof Terminal !== "function" || !window.FitAddon) { return; }

  const CLOSE_ENDED = 4410;
  const BACKOFF_START = 500;
  const BACKOFF_MAX = 10000;
  const PING_EVERY = 25000;
  const SILENT_LIMIT = 60000;  // no frame at all for this long: the socket is dead
  const KEYS = {
    "ctrl-c": "\x03", "ctrl-d": "\x04", "tab": "\t", "esc": "\x1b", "enter": "\r",
    "up": "\x1b[A", "down": "\x1b[B", "right": "\x1b[C", "left": "\x1b[D",
  };
  const STATUS_TEXT = {
    connecting: "Connecting…",
    waiting: "Waiting for the bridge on your computer…",
    connected: "Connected to your terminal",
    reconnecting: "Connection lost, reconnecting…",
    signedout: "Signed out: sign in again to reconnect",
    ended: "Session ended",
  };

  const sessionId = box.dataset.session;
  const statusEl = document.getElementById("remote-status");
  // The page carries the words in its own language (data-text-connecting, ...).
  Object.keys(STATUS_TEXT).forEach(function (state) {
    const key = "text" + state.charAt(0).toUpperCase() + state.slice(1);
    if (statusEl && statusEl.dataset[key]) { STATUS_TEXT[state] = statusEl.dataset[key]; }
  });
  const lineForm = document.getElementById("term-line");
  const lineInput = document.getElementById("term-line-text");
  const keyButtons = document.querySelectorAll(".term-key");
  const encoder = new TextEncoder();
  const decoder = new TextDecoder();

  const narrow = window.matchMedia("(max-width: 600px)").matches;
  const term = new Terminal({
    fontFamily: 'ui-monospace, SFMono-Regular, Menlo, Consolas, "DejaVu Sans Mono", ' +
      '"Liberation Mono", monospace',
    fontSize: narrow ? 12 : 14,
    cursorBlink: true,
    scrollback: 5000,
    allowProposedApi: false,
    theme: { background: "#0f1117", foreground: "#e7e9ef", cursor: "#8b93ff",
             selectionBackground: "#3b3f6b" },
  });
  const fit = new FitAddon.FitAddon();
  term.loadAddon(fit);
  term.open(box);

  let socket = null;
  let ended = false;
  let backoff = BACKOFF_START;
  let retryTimer = 0;
  let lastFrameAt = 0;
  let sentSize = "";
  // The hub replays its recent output to a viewer that joins, before its first status
  // frame. After a reconnect that replay repaints what the screen already shows, so the
  // screen is cleared first instead of showing it twice.
  let awaitingReplay = false;
  let bridgeUp = false;

  function setStatus(state, detail) {
    statusEl.dataset.state = state;
    statusEl.textContent = detail ? STATUS_TEXT[state] + ": " + detail : STATUS_TEXT[state];
  }

  function toBase64(bytes) {
    let text = "";
    for (let i = 0; i < bytes.length; i += 0x8000) {
      text += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
    }
    return btoa(text);
  }

  function fromBase64(b64) {
    const text = atob(b64);
    const bytes = new Uint8Array(text.length);
    for (let i = 0; i < text.length; i++) { bytes[i] = text.charCodeAt(i); }
    return bytes;
  }

  function send(message) {
    if (socket && socket.readyState === WebSocket.OPEN) {
      socket.send(JSON.stringify(message));
      return true;
    }
    return false;
  }

  function sendInput(text) {
    if (ended || !text) { return; }
    send({ type: "input", data: toBase64(encoder.encode(text)) });
  }

  function sendSize() {
    const size = term.cols + "x" + term.rows;
    if (size !== sentSize && send({ type: "resize", cols: term.cols, rows: term.rows })) {
      sentSize = size;
    }
  }

  function refit() {
    try {
      fit.fit();
    } catch (err) {
      return;  // hidden or zero-sized: the next resize event fits again
    }
    sendSize();
  }

  function showEnded(reason) {
    if (ended) { return; }
    ended = true;
    clearTimeout(retryTimer);
    setStatus("ended", reason || "");
    term.options.disableStdin = true;
    term.options.cursorBlink = false;
    for (const button of keyButtons) { button.disabled = true; }
    lineInput.disabled = true;
    lineForm.querySelector("button").disabled = true;
    document.body.classList.add("term-ended");
  }

  function scheduleReconnect() {
    if (ended) { return; }
    setStatus("reconnecting");
    clearTimeout(retryTimer);
    const wait = backoff * (0.75 + Math.random() * 0.5);
    backoff = Math.min(backoff * 2, BACKOFF_MAX);
    retryTimer = setTimeout(checkThenConnect, wait);
  }

  // A refused handshake looks like any dropped socket to a page, so ask the JSON API why
  // before trying again: over (ended/expired) and signed out stop the retries.
  function checkThenConnect() {
    fetch(box.dataset.statusUrl, { credentials: "same-origin", cache: "no-store" })
      .then(function (response) {
        if (response.status === 401) { setStatus("signedout"); return null; }
        if (response.status === 404) { showEnded("no such session"); return null; }
        return response.ok ? response.json() : {};
      })
      .then(function (info) {
        if (info === null) { return; }
        if (info.open === false) { showEnded(info.end_reason || info.state); return; }
        connect();
      }, function () { scheduleReconnect(); });
  }

  function connect() {
    if (ended) { return; }
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    const url = scheme + "//" + location.host + box.dataset.wsPath + "?role=viewer&session=" +
      encodeURIComponent(sessionId);
    const ws = new WebSocket(url);
    ws.binaryType = "arraybuffer";
    socket = ws;
    setStatus(statusEl.dataset.state === "reconnecting" ? "reconnecting" : "connecting");

    ws.onopen = function () {
      awaitingReplay = true;
      bridgeUp = false;
      backoff = BACKOFF_START;
      lastFrameAt = Date.now();
      sentSize = "";  // a new connection (maybe a new bridge): tell it the size again
      refit();
      sendSize();
    };
    ws.onmessage = function (event) {
      lastFrameAt = Date.now();
      const text = typeof event.data === "string" ? event.data : decoder.decode(event.data);
      let message;
      try {
        message = JSON.parse(text);
      } catch (err) {
        return;
      }
      if (message.type === "output") {
        if (awaitingReplay) { term.reset(); }
        awaitingReplay = false;
        term.write(fromBase64(message.data));
      } else if (message.type === "status") {
        awaitingReplay = false;
        if (message.ended) {
          showEnded(message.reason);
        } else {
          if (message.bridge && !bridgeUp) {
            sentSize = "";  // a bridge (re)joined: the hub dropped resizes sent without one
            sendSize();
          }
          bridgeUp = message.bridge;
          setStatus(message.bridge ? "connected" : "waiting",
                    message.viewers > 1 ? message.viewers + " viewers" : "");
        }
      }
    };
    ws.onclose = function (event) {
      if (socket !== ws) { return; }
      socket = null;
      if (event.code === CLOSE_ENDED) {
        showEnded(event.reason || "");
      } else {
        scheduleReconnect();
      }
    };
  }

  term.onData(sendInput);
  lineInput.setAttribute("enterkeyhint", "send");  // (set here: the validator we use predates it)

  for (const button of keyButtons) {
    // keep the focus (and a phone's keyboard) where it was
    button.addEventListener("mousedown", function (event) { event.preventDefault(); });
    button.addEventListener("click", function () {
      sendInput(KEYS[button.dataset.key] || "");
    });
  }

  lineForm.addEventListener("submit", function (event) {
    event.preventDefault();
    sendInput(lineInput.value + "\r");
    lineInput.value = "";
  });

  let fitTimer = 0;
  function refitSoon() {
    clearTimeout(fitTimer);
    fitTimer = setTimeout(refit, 80);
  }
  window.addEventListener("resize", refitSoon);
  window.addEventListener("orientationchange", refitSoon);
  if (window.visualViewport) { window.visualViewport.addEventListener("resize", refitSoon); }
  if (window.ResizeObserver) { new ResizeObserver(refitSoon).observe(box); }

  // Phones freeze background tabs and drop their sockets: come back at once, not after
  // the backoff, when the page is shown again or the network returns.
  function wake() {
    if (ended || document.visibilityState !== "visible") { return; }
    if (socket === null) {
      clearTimeout(retryTimer);
      backoff = BACKOFF_START;
      checkThenConnect();
    }
  }
  document.addEventListener("visibilitychange", wake);
  window.addEventListener("online", wake);

  setInterval(function () {
    if (!socket || socket.readyState !== WebSocket.OPEN) { return; }
    if (Date.now() - lastFrameAt > SILENT_LIMIT) {
      const dead = socket;
      socket = null;  // a dead link may take long to report its close: do not wait for it
      dead.close();
      scheduleReconnect();
      return;
    }
    send({ type: "ping" });
  }, PING_EVERY);

  // For people and tests: the terminal and what its screen and scrollback hold.
  window.llmapiRemote = {
    terminal: term,
    text: function () {
      const buffer = term.buffer.active;
      const lines = [];
      for (let i = 0; i < buffer.length; i++) {
        lines.push(buffer.getLine(i).translateToString(true));
      }
      return lines.join("\n");
    },
    state: function () { return statusEl.dataset.state; },
  };

  refit();
  connect();
})();
