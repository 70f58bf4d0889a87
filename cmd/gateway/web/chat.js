// The gateway's chat page: plain JavaScript, no build step, no external
// URL. It joins /ws/chat/<room>/ with ids=1 (every chat frame carries its
// stream ID), ack=1 (each stored message is acknowledged by its cid) and
// presence=1 (member count). After a drop it reconnects with backoff and
// since=<last ID received>, so nothing is missed, and resends every
// message not yet acknowledged with the same cid, so nothing is doubled.
// User data is only ever put in the page with textContent.
'use strict';

(() => {
  // The server's rule for room names (room.ValidRoomName).
  const ROOM_RE = /^[A-Za-z0-9_.-]{1,100}$/;
  const HISTORY = 50; // messages shown on the first join
  const SEEN_MAX = 5000; // stream IDs remembered to drop duplicates
  const BACKOFF_MIN = 500;
  const BACKOFF_MAX = 15000;

  const $ = (id) => document.getElementById(id);

  const st = {
    room: '',
    ws: null,
    lastId: '', // the highest stream ID received: since= on reconnect
    seen: new Map(), // stream ID -> <li>, to show each message once
    pending: new Map(), // cid -> {payload, el}: sent, not yet acknowledged
    attempt: 0,
    timer: 0,
    stopped: false,
  };

  // ---- helpers ----

  function parseId(id) {
    const m = /^(\d+)(?:-(\d+))?$/.exec(id || '');
    return m ? [Number(m[1]), Number(m[2] || 0)] : null;
  }

  function idAfter(a, b) { // a > b
    const x = parseId(a);
    const y = parseId(b);
    if (!x) return false;
    if (!y) return true;
    return x[0] > y[0] || (x[0] === y[0] && x[1] > y[1]);
  }

  function newCid() {
    const b = new Uint8Array(12);
    crypto.getRandomValues(b);
    return Array.from(b, (v) => v.toString(16).padStart(2, '0')).join('');
  }

  function asText(v) {
    return typeof v === 'string' ? v : JSON.stringify(v);
  }

  function remember(id, el) {
    st.seen.set(id, el);
    if (st.seen.size > SEEN_MAX) st.seen.delete(st.seen.keys().next().value);
  }

  // ---- rendering (textContent only) ----

  function atBottom() {
    const m = $('messages');
    return m.scrollHeight - m.scrollTop - m.clientHeight < 40;
  }

  function append(li) {
    const stick = atBottom();
    $('messages').appendChild(li);
    if (stick) li.scrollIntoView({ block: 'end' });
  }

  function addMessage(user, message, id, mine) {
    const li = document.createElement('li');
    li.className = mine ? 'msg mine pending' : 'msg';
    const who = document.createElement('span');
    who.className = 'who';
    who.textContent = asText(user);
    const text = document.createElement('span');
    text.className = 'text';
    text.textContent = asText(message);
    const time = document.createElement('span');
    time.className = 'time';
    li.append(who, text, time);
    li.dataset.user = asText(user);
    if (id) setId(li, id);
    append(li);
    return li;
  }

  function setId(li, id) {
    li.dataset.id = id;
    const p = parseId(id);
    if (p) {
      li.querySelector('.time').textContent =
        new Date(p[0]).toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });
    }
  }

  function system(text) {
    const li = document.createElement('li');
    li.className = 'system';
    li.textContent = text;
    append(li);
  }

  function notice(text) {
    const n = $('notice');
    n.textContent = text || '';
    n.hidden = !text;
  }

  function setStatus(state, text) {
    const s = $('status');
    s.dataset.state = state;
    s.dataset.attempt = String(st.attempt);
    s.textContent = text;
  }

  function setMembers(n) {
    const m = $('members');
    m.dataset.members = n == null ? '' : String(n);
    m.textContent = n == null ? '' : `${n} online`;
  }

  // ---- connection ----

  function wsURL() {
    const q = new URLSearchParams({ ids: '1', ack: '1', presence: '1' });
    if (st.lastId) q.set('since', st.lastId);
    else q.set('history', String(HISTORY));
    const token = new URLSearchParams(location.search).get('token');
    if (token) q.set('token', token);
    const proto = location.protocol === 'https:' ? 'wss:' : 'ws:';
    return `${proto}//${location.host}/ws/chat/${encodeURIComponent(st.room)}/?${q}`;
  }

  function connect() {
    clearTimeout(st.timer);
    if (st.stopped) return;
    setStatus('connecting', st.attempt ? `connecting (attempt ${st.attempt + 1})…` : 'connecting…');
    let ws;
    try {
      ws = new WebSocket(wsURL());
    } catch (e) {
      fail(`This page cannot open a WebSocket: ${e.message}`);
      return;
    }
    st.ws = ws;
    let opened = false;
    ws.onopen = () => {
      opened = true;
      st.attempt = 0;
      setStatus('open', 'connected');
      notice('');
      for (const p of st.pending.values()) ws.send(p.payload); // same cid: stored once
    };
    ws.onmessage = (ev) => onFrame(ev.data);
    ws.onclose = (ev) => {
      if (st.ws !== ws) return;
      st.ws = null;
      setMembers(null);
      if (opened) {
        retry(closeText(ev.code, ev.reason));
      } else {
        // A browser does not show why an upgrade was refused (close
        // 1006): ask the server over plain HTTP.
        setStatus('closed', 'not connected');
        diagnose().then((d) => (d.retry ? retry(d.text) : fail(d.text)));
      }
    };
  }

  function retry(text) {
    if (st.stopped) return;
    const base = Math.min(BACKOFF_MAX, BACKOFF_MIN * 2 ** st.attempt);
    const delay = Math.round(base / 2 + (Math.random() * base) / 2);
    st.attempt++;
    setStatus('closed', `reconnecting in ${Math.ceil(delay / 1000)} s`);
    notice(`${text} Reconnecting in ${Math.ceil(delay / 1000)} s (attempt ${st.attempt}); messages you send meanwhile are kept and sent then.`);
    st.timer = setTimeout(connect, delay);
  }

  function fail(text) {
    st.stopped = true;
    setStatus('failed', 'not connected');
    notice(text);
  }

  function closeText(code, reason) {
    const why = reason ? ` (${reason})` : '';
    switch (code) {
      case 1000: return `The connection was closed${why}.`;
      case 1001: return `The server is restarting or shutting down, or stopped hearing from this page${why}.`;
      case 1002: return `The server saw a protocol error${why}.`;
      case 1003: return `The server accepts only text messages${why}.`;
      case 1006: return 'The connection to the server was lost.';
      case 1007: return `The server received text that is not valid UTF-8${why}.`;
      case 1008: return `The server closed the connection by policy${why || ' (for example, too many messages too fast)'}.`;
      case 1009: return `A message was too large for the server${why}.`;
      case 1011: return `The server hit an internal error${why}.`;
      case 1013: return `The server is busy${why}.`;
      default: return `The connection closed with code ${code}${why}.`;
    }
  }

  async function get(path) {
    try {
      const r = await fetch(path, { cache: 'no-store' });
      return { status: r.status, body: (await r.text()).trim() };
    } catch (e) {
      return { status: 0, body: '' };
    }
  }

  async function diagnose() {
    const room = await get(`/api/rooms/${encodeURIComponent(st.room)}`);
    if (room.status === 0) {
      return { retry: true, text: 'The server cannot be reached: it may be restarting, or this device is offline.' };
    }
    if (room.status === 400) {
      return { retry: false, text: `The server refuses this room: ${room.body}` };
    }
    if (room.status === 503) {
      return { retry: true, text: 'The server is up, but its message store is unavailable.' };
    }
    if (room.status !== 200) {
      return { retry: true, text: `The server answered ${room.status}: ${room.body}` };
    }
    const ready = await get('/readyz');
    if (ready.status !== 200) {
      return { retry: true, text: 'The server is not ready: it is starting, shutting down, or its message store is down.' };
    }
    return {
      retry: true,
      text: 'The server refused the connection: this page\'s address may not be an allowed origin (ALLOWED_ORIGINS), ' +
        'the server may need a token (open the page with ?token=…), or it has too many connections.',
    };
  }

  // ---- frames ----

  function onFrame(data) {
    let f;
    try {
      f = JSON.parse(data);
    } catch (e) {
      return;
    }
    if (f === null || typeof f !== 'object') return;
    if ('ack' in f) onAck(f);
    else if ('error' in f) onError(f);
    else if ('presence' in f) setMembers(f.presence.members);
    else if ('truncated' in f) system('Some older messages of this room were trimmed from its history and cannot be shown.');
    else if ('username' in f) onChat(f);
  }

  function onChat(f) {
    if (typeof f.id === 'string') {
      if (st.seen.has(f.id)) return; // already shown (replay after a resend)
      const li = addMessage(f.username, f.message, f.id, false);
      remember(f.id, li);
      if (idAfter(f.id, st.lastId)) st.lastId = f.id;
      return;
    }
    addMessage(f.username, f.message, '', false);
  }

  function onAck(f) {
    const p = st.pending.get(f.cid);
    if (!p) return;
    st.pending.delete(f.cid);
    const shown = st.seen.get(f.ack);
    if (shown && shown !== p.el) {
      // The first send was stored but its ack was lost with the
      // connection, and the replay brought it back: keep one copy.
      p.el.remove();
      shown.classList.add('mine');
      return;
    }
    p.el.classList.remove('pending');
    setId(p.el, f.ack);
    remember(f.ack, p.el);
  }

  const ERRORS = {
    unavailable: 'The server could not store a message right now; it will be sent again.',
    unconfirmed: 'The server did not confirm a message in time; it will be sent again (it will not appear twice).',
    rate_limited: 'You are sending too fast; the message will be sent again in a moment.',
  };

  function onError(f) {
    const p = typeof f.cid === 'string' ? st.pending.get(f.cid) : null;
    const detail = f.detail ? ` (${f.detail})` : '';
    if (p && ERRORS[f.error]) {
      system(ERRORS[f.error]);
      const cid = f.cid;
      setTimeout(() => {
        const again = st.pending.get(cid);
        if (again && st.ws && st.ws.readyState === WebSocket.OPEN) st.ws.send(again.payload);
      }, f.error === 'rate_limited' ? 1500 : 1000);
      return;
    }
    if (p) {
      st.pending.delete(f.cid);
      p.el.classList.remove('pending');
      p.el.classList.add('failed');
    }
    system(`The server did not accept a message: ${f.error}${detail}.`);
  }

  // ---- sending ----

  function send(ev) {
    ev.preventDefault();
    const input = $('text');
    const text = input.value;
    if (!text.trim()) return;
    const name = $('name').value.trim() || 'guest';
    try { localStorage.setItem('chat.name', name); } catch (e) { /* private mode */ }
    const cid = newCid();
    const payload = JSON.stringify({ username: name, message: text, cid });
    const el = addMessage(name, text, '', true);
    el.scrollIntoView({ block: 'end' });
    st.pending.set(cid, { payload, el });
    if (st.ws && st.ws.readyState === WebSocket.OPEN) st.ws.send(payload);
    input.value = '';
  }

  // ---- start ----

  function storedName() {
    try {
      return localStorage.getItem('chat.name') || '';
    } catch (e) {
      return '';
    }
  }

  function showJoin() {
    $('join').hidden = false;
    $('room-title').textContent = 'pick a room';
    $('join-name').value = storedName();
    $('join-form').addEventListener('submit', (ev) => {
      ev.preventDefault();
      const room = $('join-room').value.trim();
      if (!ROOM_RE.test(room)) {
        $('join-error').textContent =
          'A room name is 1 to 100 characters: letters a–z, A–Z, digits, _ - or . (no spaces).';
        return;
      }
      const name = $('join-name').value.trim();
      if (name) {
        try { localStorage.setItem('chat.name', name); } catch (e) { /* private mode */ }
      }
      location.assign(`/${room}/`);
    });
  }

  function start() {
    const m = /^\/([^/]+)\/$/.exec(location.pathname);
    if (!m) {
      showJoin();
      return;
    }
    let room = m[1];
    try { room = decodeURIComponent(room); } catch (e) { /* keep it raw */ }
    $('chat').hidden = false;
    $('room-title').textContent = room;
    document.title = `${room} · chat`;
    if (!ROOM_RE.test(room)) {
      fail('This is not a valid room name: use 1 to 100 letters, digits, _ - or . (no spaces).');
      return;
    }
    st.room = room;
    $('name').value = storedName() || `guest-${newCid().slice(0, 4)}`;
    $('send-form').addEventListener('submit', send);
    $('text').focus();
    connect();
  }

  start();
})();
