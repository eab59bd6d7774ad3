// Live store page: displays from /live/store, shoppers and offers from /live/events (SSE).
(() => {
  'use strict';

  const SVG_NS = 'http://www.w3.org/2000/svg';
  const WIDTH = 1000, HEIGHT = 700, PAD = 50;
  const FADE_START_MS = 10000, FADE_END_MS = 30000;   // shoppers vanish 30 s after their last update
  const MAX_OFFERS = 50, STORE_REFRESH_MS = 15000;

  const params = new URLSearchParams(location.search);
  const token = params.get('token');
  const storeFilter = params.get('store_id') || params.get('store');

  const $ = (id) => document.getElementById(id);
  const displayLayer = $('displays'), shopperLayer = $('shoppers'), offerList = $('offers');

  const displays = new Map();   // "store/sku" -> {record, el}
  const shoppers = new Map();   // uid -> {lat, lon, seen, el}
  const offerIds = [];          // newest first, bounded like the list
  let promotions = [];
  let view = null;              // {kx, scale, cx, cy}

  function url(path, query = {}) {
    const q = new URLSearchParams(query);
    if (token) q.set('token', token);
    if (storeFilter && path === '/live/store') q.set('store_id', storeFilter);
    const s = q.toString();
    return s ? `${path}?${s}` : path;
  }

  function svg(tag, attrs = {}) {
    const el = document.createElementNS(SVG_NS, tag);
    for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
    return el;
  }

  // Equirectangular projection around the points' mean latitude, fitted into the view box.
  function fit(points) {
    if (!points.length) return null;
    const lat0 = points.reduce((sum, p) => sum + p.lat, 0) / points.length;
    const kx = Math.cos(lat0 * Math.PI / 180);
    const xs = points.map((p) => p.lon * kx), ys = points.map((p) => p.lat);
    const [minX, maxX, minY, maxY] = [Math.min(...xs), Math.max(...xs), Math.min(...ys), Math.max(...ys)];
    const MIN_SPAN = 2e-5;   // degrees, about 2 m: a single point is centred, not blown up
    const scale = Math.min((WIDTH - 2 * PAD) / Math.max(maxX - minX, MIN_SPAN),
                           (HEIGHT - 2 * PAD) / Math.max(maxY - minY, MIN_SPAN));
    return {kx, scale, cx: (minX + maxX) / 2, cy: (minY + maxY) / 2};
  }

  function project(lat, lon) {
    return [WIDTH / 2 + (lon * view.kx - view.cx) * view.scale,
            HEIGHT / 2 - (lat - view.cy) * view.scale];
  }

  const sameStore = (storeId) => !storeFilter || storeId === storeFilter;

  function onPromotion(d) {
    return promotions.some((p) => p.active !== false &&
      ((p.sku != null && p.sku === d.sku) || (p.segment != null && p.segment === d.segment)));
  }

  function refit() {
    const points = displays.size
      ? [...displays.values()].map((d) => d.record)
      : [...shoppers.values()];
    view = fit(points);
    if (!view) return;
    for (const d of displays.values()) placeDisplay(d);
    for (const s of shoppers.values()) placeShopper(s);
  }

  function placeDisplay(d) {
    const [x, y] = project(d.record.lat, d.record.lon);
    d.el.setAttribute('transform', `translate(${x.toFixed(1)} ${y.toFixed(1)})`);
    d.el.classList.toggle('promo', onPromotion(d.record));
  }

  function placeShopper(s) {
    const [x, y] = project(s.lat, s.lon);
    s.el.style.transform = `translate(${x.toFixed(1)}px, ${y.toFixed(1)}px)`;
  }

  function renderStore(snapshot) {
    promotions = snapshot.promotions || [];
    const seen = new Set();
    for (const rec of snapshot.displays || []) {
      const key = `${rec.store_id}/${rec.sku}`;
      seen.add(key);
      let d = displays.get(key);
      if (!d) {
        const el = svg('g', {class: 'display', 'data-sku': rec.sku, 'data-store-id': rec.store_id});
        el.append(svg('rect', {x: -10, y: -10, width: 20, height: 20, rx: 3}), svg('text', {y: 26}),
                  svg('title'));
        displayLayer.append(el);
        d = {el};
        displays.set(key, d);
      }
      d.record = rec;
      d.el.querySelector('text').textContent = rec.segment || rec.sku;
      d.el.querySelector('title').textContent =
        `${rec.sku}${rec.segment ? ` · ${rec.segment}` : ''}${rec.variant ? ` · ${rec.variant}` : ''}`;
    }
    for (const [key, d] of displays) {
      if (!seen.has(key)) { d.el.remove(); displays.delete(key); }
    }
    $('display-count').textContent = displays.size;
    refit();
  }

  async function loadStore() {
    try {
      const response = await fetch(url('/live/store'), {cache: 'no-store'});
      if (response.ok) renderStore(await response.json());
    } catch (err) {
      console.warn('live store: snapshot failed', err);
    }
  }

  function onPosition(p) {
    if (!sameStore(p.store_id)) return;
    let s = shoppers.get(p.uid);
    if (!s) {
      s = {el: svg('circle', {class: 'shopper', r: 7, 'data-uid': p.uid})};
      s.el.append(svg('title'));
      s.el.lastChild.textContent = p.uid;
      shopperLayer.append(s.el);
      shoppers.set(p.uid, s);
    }
    Object.assign(s, {lat: p.lat, lon: p.lon, seen: performance.now()});
    s.el.style.opacity = 1;
    if (!view || !displays.size) refit(); else placeShopper(s);
    $('shopper-count').textContent = shoppers.size;
  }

  function fade() {
    const now = performance.now();
    for (const [uid, s] of shoppers) {
      const age = now - s.seen;
      if (age >= FADE_END_MS) { s.el.remove(); shoppers.delete(uid); continue; }
      s.el.style.opacity = age <= FADE_START_MS ? 1
        : 1 - (age - FADE_START_MS) / (FADE_END_MS - FADE_START_MS);
    }
    $('shopper-count').textContent = shoppers.size;
  }

  function flash(el, cls) {
    el.classList.remove(cls);
    void el.getBoundingClientRect();          // restart the animation
    el.classList.add(cls);
    setTimeout(() => el.classList.remove(cls), 1600);
  }

  function onOffer(o) {
    if (!sameStore(o.store_id) || offerIds.includes(o.offer_id)) return;
    const li = document.createElement('li');
    li.className = 'offer';
    li.dataset.offerId = o.offer_id;
    li.dataset.sku = o.sku;
    const pct = document.createElement('span');
    pct.className = 'pct';
    pct.textContent = `−${o.discount_pct}%`;
    const who = document.createElement('div');
    who.textContent = `${o.uid} · ${o.sku}`;
    const when = document.createElement('small');
    const at = o.ts ? new Date(o.ts * 1000) : new Date();
    when.textContent = `${o.segment || ''} ${at.toLocaleTimeString()}`.trim();
    li.append(pct, who, when);
    offerList.prepend(li);
    offerIds.unshift(o.offer_id);
    while (offerIds.length > MAX_OFFERS) { offerIds.pop(); offerList.lastElementChild.remove(); }
    $('offer-count').textContent = Number($('offer-count').textContent) + 1;

    for (const d of displays.values()) {
      if (d.record.sku === o.sku && (!o.store_id || d.record.store_id === o.store_id)) flash(d.el, 'flash');
    }
    const s = shoppers.get(o.uid);
    if (s) flash(s.el, 'offered');
  }

  function onStatus(status) {
    const box = $('feed-status');
    for (const source of ['positions', 'offers']) {
      box.dataset[source] = status[source] ? 'live' : 'down';
      $(`status-${source}`).classList.toggle('live', Boolean(status[source]));
    }
  }

  function connect() {
    const events = new EventSource(url('/live/events'));
    const on = (name, handler) => events.addEventListener(name, (e) => {
      try { handler(JSON.parse(e.data)); } catch (err) { console.warn(`live ${name}`, err); }
    });
    on('status', onStatus);
    on('position', onPosition);
    on('offer', onOffer);
    events.addEventListener('open', loadStore);     // also after a reconnect
    events.addEventListener('error', () => onStatus({positions: false, offers: false}));
  }

  loadStore();
  connect();
  setInterval(fade, 1000);
  setInterval(loadStore, STORE_REFRESH_MS);

  // Conversion and lift per promotion (sent against held out), every two seconds.
  function pct(x) { return x === null ? '–' : `${(100 * x).toFixed(1)}%`; }
  async function loadLift() {
    try {
      const response = await fetch(url('/live/promotions'), {cache: 'no-store'});
      if (!response.ok) return;
      const body = await response.json();
      const rows = body.promotions.map((p) => {
        const ci = p.lift_ci95 ? ` (${pct(p.lift_ci95[0])} … ${pct(p.lift_ci95[1])})` : '';
        const cells = [p.pid, p.sent.offers, pct(p.sent.conversion), p.held_out.offers,
                       pct(p.held_out.conversion), p.lift === null ? '–' : pct(p.lift) + ci];
        const tr = document.createElement('tr');
        for (const value of cells) {
          const td = document.createElement('td');
          td.textContent = String(value);
          tr.append(td);
        }
        return tr;
      });
      $('lift').tBodies[0].replaceChildren(...rows);
    } catch (err) {
      console.warn('live store: promotions failed', err);
    }
  }
  loadLift();
  setInterval(loadLift, 2000);
})();
