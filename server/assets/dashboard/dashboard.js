// fedcrime federation dashboard: renders the server's State (GET api/state, SSE api/events).
// All server text goes into the page with textContent / attributes, never as HTML.
(function () {
  'use strict';

  var ROUNDS_SHOWN = 15;
  var POLL_MS = 5000;
  var RETRY_MIN_MS = 2000;
  var RETRY_MAX_MS = 30000;
  var SVG_NS = 'http://www.w3.org/2000/svg';
  var COS_LAT = Math.cos(34 * Math.PI / 180);
  var MAP_WIDTH = 1000;
  var MAP_PAD = 12;
  var NO_DATA_FILL = '#c9cdd3';
  var OUTLINE_FILL = '#d9dce1';
  // sequential scale, light yellow -> dark red
  var RAMP = ['#fff6c2', '#fde08a', '#fbbd5c', '#f5903f', '#e35d33', '#c1302a', '#8a1224'];
  var COLORS = { metric: '#2458b8', reference: '#9a6200', train: '#d9742b', eval: '#2458b8' };

  var app = { state: null, renders: 0 };
  window.fedcrimeDashboard = app;

  var errors = {};          // source -> message, shown in the banner
  var geo = null;           // {areas: [...], byCode: {code: {area, path, title}}}
  var charts = {
    curve: { plot: null, key: '', width: 0 },
    loss: { plot: null, key: '', width: 0 }
  };
  var connection = { es: null, live: false, retryMs: RETRY_MIN_MS, retryTimer: null, pollTimer: null };

  // ---------- small helpers ----------

  function $(id) { return document.getElementById(id); }

  function setText(id, text) {
    var e = $(id);
    if (e) e.textContent = text;
    return e;
  }

  function el(tag, opts, children) {
    var e = document.createElement(tag);
    if (opts) {
      if (opts.className) e.className = opts.className;
      if (opts.text != null) e.textContent = String(opts.text);
      if (opts.title != null) e.title = String(opts.title);
      if (opts.data) {
        Object.keys(opts.data).forEach(function (k) { e.dataset[k] = String(opts.data[k]); });
      }
    }
    if (children) children.forEach(function (c) { if (c != null) e.appendChild(c); });
    return e;
  }

  function td(text, className, title) {
    return el('td', { text: text, className: className || '', title: title });
  }

  function isNum(v) { return typeof v === 'number' && isFinite(v); }

  function str(v, fallback) {
    if (v == null || v === '') return fallback == null ? '—' : fallback;
    return String(v);
  }

  function fmtInt(v) { return isNum(v) ? String(Math.round(v)) : '—'; }

  function fmtMetric(v) {
    if (!isNum(v)) return '—';
    var a = Math.abs(v);
    return v.toFixed(a >= 100 ? 1 : a >= 10 ? 2 : 3);
  }

  function fmtLoss(v) {
    if (!isNum(v)) return '—';
    var a = Math.abs(v);
    return v.toFixed(a >= 100 ? 1 : a >= 10 ? 3 : 4);
  }

  // map values: at most 2 decimals, no trailing zeros (3.8, 12.25, 4)
  function fmtValue(v) {
    if (!isNum(v)) return '—';
    if (Number.isInteger(v)) return String(v);
    var t = v.toFixed(Math.abs(v) >= 100 ? 0 : 2);
    return t.indexOf('.') >= 0 ? t.replace(/0+$/, '').replace(/\.$/, '') : t;
  }

  function fmtSecondsNum(v) {
    if (!isNum(v)) return '—';
    var a = Math.abs(v);
    return v.toFixed(a >= 100 ? 0 : a >= 10 ? 1 : 2);
  }

  function fmtSeconds(v) {
    if (!isNum(v)) return '—';
    if (v >= 120) {
      var m = Math.floor(v / 60);
      var s = Math.round(v - m * 60);
      if (s === 60) { m += 1; s = 0; }
      return m + ' min ' + (s < 10 ? '0' : '') + s + ' s';
    }
    return fmtSecondsNum(v) + ' s';
  }

  function fmtBytes(v) {
    if (!isNum(v)) return '—';
    var units = ['B', 'KB', 'MB', 'GB', 'TB'];
    var i = 0;
    var x = v;
    while (Math.abs(x) >= 1000 && i < units.length - 1) { x /= 1000; i += 1; }
    if (i === 0) return Math.round(x) + ' B';
    return x.toFixed(Math.abs(x) >= 100 ? 0 : 1) + ' ' + units[i];
  }

  function fmtDuration(sec) {
    if (!isNum(sec)) return '—';
    sec = Math.max(0, sec);
    if (sec < 60) return Math.round(sec) + ' s';
    if (sec < 3600) return Math.floor(sec / 60) + ' min ' + Math.round(sec % 60) + ' s';
    if (sec < 86400) return Math.floor(sec / 3600) + ' h ' + Math.floor((sec % 3600) / 60) + ' min';
    return Math.floor(sec / 86400) + ' d ' + Math.floor((sec % 86400) / 3600) + ' h';
  }

  function fmtTime(unix) {
    if (!isNum(unix)) return '—';
    var d = new Date(unix * 1000);
    if (isNaN(d.getTime())) return '—';
    function p(n) { return (n < 10 ? '0' : '') + n; }
    return d.getFullYear() + '-' + p(d.getMonth() + 1) + '-' + p(d.getDate()) + ' ' +
      p(d.getHours()) + ':' + p(d.getMinutes()) + ':' + p(d.getSeconds());
  }

  // failed: {reason: count} -> {total, text}
  function failures(failed) {
    var total = 0;
    var parts = [];
    if (failed && typeof failed === 'object') {
      Object.keys(failed).sort().forEach(function (k) {
        var n = failed[k];
        if (isNum(n)) total += n;
        parts.push(k + ' ' + (isNum(n) ? n : str(n)));
      });
    }
    return { total: total, text: parts.join(', ') };
  }

  function asArray(v) { return Array.isArray(v) ? v : []; }

  // rounds sorted by round number (stable for equal numbers)
  function sortedRounds(state) {
    return asArray(state.rounds)
      .filter(function (r) { return r && typeof r === 'object'; })
      .map(function (r, i) { return { r: r, i: i }; })
      .sort(function (a, b) {
        var x = isNum(a.r.round) ? a.r.round : -Infinity;
        var y = isNum(b.r.round) ? b.r.round : -Infinity;
        return x - y || a.i - b.i;
      })
      .map(function (e) { return e.r; });
  }

  // ---------- error banner ----------

  function setError(source, message) {
    if (message) errors[source] = message; else delete errors[source];
    var banner = $('error');
    if (!banner) return;
    var msgs = Object.keys(errors).map(function (k) { return errors[k]; });
    banner.textContent = msgs.join(' · ');
    banner.hidden = msgs.length === 0;
  }

  function errText(e) {
    if (e && e.message) return e.message;
    return String(e);
  }

  // ---------- header, progress, summary ----------

  function renderHeader(state) {
    var run = state.run || {};
    setText('run-id', str(run.id));
    setText('run-source', str(run.source));
    setText('run-task', str(run.task));
    setText('run-model', str(run.model));
    setText('run-strategy', str(run.strategy));
    setText('run-started', fmtTime(run.started_unix));
  }

  function renderProgress(state) {
    var run = state.run || {};
    var round = isNum(state.round) ? state.round : 0;
    var planned = isNum(run.rounds) ? run.rounds : null;
    setText('round', 'Round ' + round + (planned != null ? ' / ' + planned : ''));

    var bar = $('progress-bar');
    if (bar) {
      var frac = 0;
      if (state.phase === 'finished') frac = 1;
      else if (planned) frac = Math.min(1, Math.max(0, round / planned));
      bar.style.width = (frac * 100).toFixed(1) + '%';
      bar.parentNode.hidden = planned == null && state.phase !== 'finished';
    }

    var phase = $('phase');
    if (phase) {
      var p = str(state.phase, 'unknown');
      phase.dataset.phase = p;
      var badge = phase.querySelector('.phase-badge');
      var detail = phase.querySelector('.phase-detail');
      badge.textContent = p;
      badge.dataset.kind = p;
      detail.textContent = state.phase_detail != null ? String(state.phase_detail) : '';
    }

    document.title = 'Round ' + round + (planned != null ? '/' + planned : '') + ' ' +
      str(state.phase, '') + ' — fedcrime';
    renderClock();
  }

  function renderClock() {
    var state = app.state;
    if (!state) return;
    var now = Date.now() / 1000;
    var parts = [];
    if (isNum(state.updated_unix)) parts.push('updated ' + fmtDuration(now - state.updated_unix) + ' ago');
    var run = state.run || {};
    if (isNum(run.started_unix)) {
      var end = (state.phase === 'finished' || state.phase === 'failed') && isNum(state.updated_unix)
        ? state.updated_unix : now;
      parts.push('running for ' + fmtDuration(end - run.started_unix));
    }
    setText('updated', parts.join(' · ') || '—');
  }

  function bestMetric(rounds, higherIsBetter) {
    var best = null;
    rounds.forEach(function (r) {
      if (!isNum(r.metric)) return;
      if (!best || (higherIsBetter ? r.metric > best.metric : r.metric < best.metric)) best = r;
    });
    return best;
  }

  function renderSummary(state) {
    var run = state.run || {};
    var stations = asArray(state.stations);
    var connected = stations.filter(function (s) { return s && s.connected === true; }).length;
    setText('stat-stations', connected + ' / ' + stations.length);

    var rounds = sortedRounds(state);
    var last = rounds.length ? rounds[rounds.length - 1] : null;
    if (last) {
      var f = failures(last.failed);
      setText('stat-sampled', fmtInt(last.sampled));
      setText('stat-reported', fmtInt(last.reported));
      var failedEl = setText('stat-failed', String(f.total));
      failedEl.classList.toggle('bad', f.total > 0);
      setText('stat-failed-reasons', f.text ? f.text : 'no failures');
      setText('stat-seconds', fmtSeconds(last.seconds));
      setText('stat-seconds-split', 'wait ' + fmtSecondsNum(last.wait_s) + ' · fit ' +
        fmtSecondsNum(last.fit_s) + ' · eval ' + fmtSecondsNum(last.eval_s) + ' s (round ' + fmtInt(last.round) + ')');
      setText('stat-bytes', fmtBytes(last.bytes_in) + ' / ' + fmtBytes(last.bytes_out));
    } else {
      ['stat-sampled', 'stat-reported', 'stat-failed', 'stat-seconds', 'stat-bytes'].forEach(function (id) {
        setText(id, '—');
      });
      $('stat-failed').classList.remove('bad');
      setText('stat-failed-reasons', 'no rounds yet');
      setText('stat-seconds-split', '');
    }

    setText('stat-metric-label', str(run.metric_label || run.metric, 'metric'));
    var latest = null;
    for (var i = rounds.length - 1; i >= 0; i -= 1) {
      if (isNum(rounds[i].metric)) { latest = rounds[i]; break; }
    }
    setText('stat-metric', latest ? fmtMetric(latest.metric) : '—');
    var hib = run.higher_is_better !== false;
    var best = bestMetric(rounds, hib);
    var sub = [];
    if (latest) sub.push('round ' + fmtInt(latest.round));
    if (best) sub.push('best ' + fmtMetric(best.metric) + ' (round ' + fmtInt(best.round) + ')');
    if (run.reference && isNum(run.reference.value)) {
      sub.push(str(run.reference.label, 'reference') + ' ' + fmtMetric(run.reference.value));
    }
    setText('stat-metric-best', sub.join(' · '));
  }

  // ---------- tables ----------

  function badge(text, kind) {
    return el('span', { className: 'badge', text: text, data: { kind: kind } });
  }

  function renderStations(state) {
    var stations = asArray(state.stations).filter(function (s) { return s && typeof s === 'object'; });
    var tbody = $('stations').tBodies[0];
    var rows = stations.map(function (s) {
      var connected = s.connected === true;
      var status = str(s.status, 'unknown');
      var tr = el('tr', { data: { station: str(s.id, ''), status: status, connected: connected } }, [
        td(str(s.id)),
        el('td', null, [badge(connected ? 'yes' : 'no', connected ? 'yes' : 'no')]),
        el('td', null, [badge(status, status)]),
        td(fmtInt(s.last_round), 'num'),
        td(fmtInt(s.updates), 'num'),
        td(fmtInt(s.failures), 'num'),
        td(s.last_failure != null ? String(s.last_failure) : '—', s.last_failure != null ? 'reason' : '')
      ]);
      return tr;
    });
    tbody.replaceChildren.apply(tbody, rows);
    var connected = stations.filter(function (s) { return s.connected === true; }).length;
    setText('stations-count', stations.length ? '(' + connected + ' of ' + stations.length + ' connected)' : '');
    $('stations-empty').hidden = stations.length > 0;
  }

  function renderRounds(state) {
    var run = state.run || {};
    setText('rounds-metric-head', str(run.metric, 'metric'));
    var rounds = sortedRounds(state).slice(-ROUNDS_SHOWN).reverse();
    var tbody = $('rounds').tBodies[0];
    var rows = rounds.map(function (r) {
      var f = failures(r.failed);
      var tr = el('tr', { data: { round: fmtInt(r.round), aggregated: r.aggregated === true } }, [
        td(fmtInt(r.round), 'num', r.aggregated === false ? 'not aggregated' : null),
        td(fmtInt(r.sampled), 'num'),
        td(fmtInt(r.reported), 'num'),
        td(f.total ? f.total + ' (' + f.text + ')' : '0', f.total ? 'reason' : ''),
        td(fmtSecondsNum(r.seconds), 'num'),
        td(fmtSecondsNum(r.wait_s) + ' / ' + fmtSecondsNum(r.fit_s) + ' / ' + fmtSecondsNum(r.eval_s), 'num'),
        td(fmtBytes(r.bytes_in) + ' / ' + fmtBytes(r.bytes_out), 'num'),
        td(fmtLoss(r.train_loss), 'num'),
        td(fmtLoss(r.eval_loss), 'num'),
        td(fmtMetric(r.metric), 'num'),
        td(r.note != null ? String(r.note) : (r.aggregated === false ? 'not aggregated' : ''), 'note')
      ]);
      if (r.aggregated === false) tr.className = 'not-aggregated';
      return tr;
    });
    tbody.replaceChildren.apply(tbody, rows);
    $('rounds-empty').hidden = rounds.length > 0;
  }

  // ---------- charts (uPlot) ----------

  function chartWidth(container) {
    var w = Math.floor(container.clientWidth || 0);
    return w > 50 ? w : 600;
  }

  function chartHeight(name) { return name === 'curve' ? 270 : 230; }

  // one point per round number (the last row for a number wins), ascending
  function chartRows(state) {
    var byRound = {};
    var order = [];
    sortedRounds(state).forEach(function (r) {
      if (!isNum(r.round)) return;
      if (!(r.round in byRound)) order.push(r.round);
      byRound[r.round] = r;
    });
    return order.map(function (n) { return byRound[n]; });
  }

  function num(v) { return isNum(v) ? v : null; }

  // x extent of the charts: round 1 (or the first round shown) to the planned rounds
  // (or the last round); computed from the state, not from uPlot's data extent
  var xExtent = [1, 2];

  function updateXExtent(state, xs) {
    var run = state.run || {};
    var lo = xs.length ? Math.min(1, xs[0]) : 1;
    var hi = xs.length ? xs[xs.length - 1] : lo;
    if (isNum(run.rounds)) hi = Math.max(hi, run.rounds);
    if (hi <= lo) hi = lo + 1;
    xExtent = [lo, hi];
  }

  function xRange() { return [xExtent[0], xExtent[1]]; }

  function yRange(u, min, max) {
    if (!isNum(min) || !isNum(max)) return [0, 1];
    var lo = min;
    var hi = max;
    if (hi - lo < 1e-9) {
      var pad = Math.max(Math.abs(lo) * 0.1, 0.05);
      lo -= pad;
      hi += pad;
    } else {
      var span = hi - lo;
      lo -= span * 0.1;
      hi += span * 0.1;
    }
    if (min >= 0 && lo < 0) lo = 0;
    return [lo, hi];
  }

  function roundAxis() {
    return {
      label: 'round',
      incrs: [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000],
      values: function (u, splits) {
        return splits.map(function (v) { return Number.isInteger(v) ? String(v) : ''; });
      }
    };
  }

  function roundSeries() {
    return { label: 'round', value: function (u, v) { return isNum(v) ? String(v) : '—'; } };
  }

  function curveSpec(state) {
    var run = state.run || {};
    var label = str(run.metric_label || run.metric, 'metric');
    var ref = run.reference && isNum(run.reference.value) ? run.reference : null;
    var key = JSON.stringify([label, ref ? str(ref.label, 'reference') : null]);
    var rows = chartRows(state);
    var xs = rows.map(function (r) { return r.round; });
    updateXExtent(state, xs);
    var metric = rows.map(function (r) { return num(r.metric); });
    if (ref) {
      // the reference line spans the whole x extent, even with 0 or 1 rounds
      if (!xs.length || xs[0] > xExtent[0]) { xs.unshift(xExtent[0]); metric.unshift(null); }
      if (xs[xs.length - 1] < xExtent[1]) { xs.push(xExtent[1]); metric.push(null); }
    }
    var data = [xs, metric];
    if (ref) data.push(xs.map(function () { return ref.value; }));
    var fmt = function (u, v) { return isNum(v) ? fmtMetric(v) : '—'; };
    var opts = function () {
      var series = [roundSeries(), {
        label: label, stroke: COLORS.metric, width: 2, spanGaps: true,
        points: { show: true, size: 6, fill: COLORS.metric }, value: fmt
      }];
      if (ref) {
        series.push({
          label: str(ref.label, 'reference'), stroke: COLORS.reference, width: 1.5, dash: [8, 6],
          points: { show: false }, value: fmt
        });
      }
      return {
        series: series,
        scales: { x: { time: false, range: xRange }, y: { range: yRange } },
        axes: [roundAxis(), { label: label, size: 64 }],
        cursor: { drag: { x: false, y: false } }
      };
    };
    return { key: key, data: data, opts: opts, empty: !metric.some(isNum) };
  }

  function lossSpec(state) {
    var rows = chartRows(state);
    var xs = rows.map(function (r) { return r.round; });
    var data = [xs, rows.map(function (r) { return num(r.train_loss); }), rows.map(function (r) { return num(r.eval_loss); })];
    var fmt = function (u, v) { return isNum(v) ? fmtLoss(v) : '—'; };
    var opts = function () {
      return {
        series: [roundSeries(),
          { label: 'train loss', stroke: COLORS.train, width: 1.5, spanGaps: true, points: { show: true, size: 5, fill: COLORS.train }, value: fmt },
          { label: 'eval loss', stroke: COLORS.eval, width: 2, spanGaps: true, points: { show: true, size: 5, fill: COLORS.eval }, value: fmt }],
        scales: { x: { time: false, range: xRange }, y: { range: yRange } },
        axes: [roundAxis(), { label: 'loss', size: 64 }],
        cursor: { drag: { x: false, y: false } }
      };
    };
    return { key: 'loss', data: data, opts: opts, empty: !(data[1].some(isNum) || data[2].some(isNum)) };
  }

  function updateChart(name, spec, noteId, emptyText) {
    var container = $(name);
    var note = $(noteId);
    if (!container) return;
    if (typeof window.uPlot !== 'function') {
      note.textContent = 'chart library (uPlot) not loaded';
      note.hidden = false;
      return;
    }
    var c = charts[name];
    if (c.plot && c.key !== spec.key) {
      c.plot.destroy();
      c.plot = null;
      container.replaceChildren();
    }
    if (!c.plot) {
      var opts = spec.opts();
      c.width = chartWidth(container);
      opts.width = c.width;
      opts.height = chartHeight(name);
      c.plot = new window.uPlot(opts, spec.data, container);
      c.key = spec.key;
    } else {
      c.plot.setData(spec.data);
    }
    note.textContent = emptyText;
    note.hidden = !spec.empty;
  }

  function renderCharts(state) {
    updateChart('curve', curveSpec(state), 'curve-note', 'no evaluated rounds yet');
    updateChart('loss', lossSpec(state), 'loss-note', 'no losses reported yet');
  }

  var resizePending = false;
  function resizeCharts() {
    resizePending = false;
    Object.keys(charts).forEach(function (name) {
      var c = charts[name];
      var container = $(name);
      if (!c.plot || !container) return;
      var w = chartWidth(container);
      if (Math.abs(w - c.width) >= 2) {
        c.width = w;
        c.plot.setSize({ width: w, height: chartHeight(name) });
      }
    });
  }

  function watchResize() {
    var schedule = function () {
      if (resizePending) return;
      resizePending = true;
      window.requestAnimationFrame(resizeCharts);
    };
    if (typeof window.ResizeObserver === 'function') {
      var ro = new window.ResizeObserver(schedule);
      ['curve', 'loss'].forEach(function (id) { var e = $(id); if (e) ro.observe(e); });
    } else {
      window.addEventListener('resize', schedule);
    }
  }

  // ---------- map ----------

  function hexRgb(h) {
    return [parseInt(h.slice(1, 3), 16), parseInt(h.slice(3, 5), 16), parseInt(h.slice(5, 7), 16)];
  }
  var RAMP_RGB = RAMP.map(hexRgb);

  function rampColor(t) {
    if (!isNum(t)) t = 0.5;
    t = Math.min(1, Math.max(0, t));
    var pos = t * (RAMP_RGB.length - 1);
    var i = Math.min(RAMP_RGB.length - 2, Math.floor(pos));
    var f = pos - i;
    var a = RAMP_RGB[i];
    var b = RAMP_RGB[i + 1];
    var rgb = [0, 1, 2].map(function (k) { return Math.round(a[k] + (b[k] - a[k]) * f); });
    return 'rgb(' + rgb.join(',') + ')';
  }

  function buildMap(json) {
    var svg = $('map');
    var areas = asArray(json && json.areas).filter(function (a) { return a && isNum(a.code); });
    if (!areas.length) throw new Error('la-areas.json holds no areas');
    var rings = function (a) { return asArray(a.polygons).concat(asArray(a.holes)); };
    var minX = Infinity, maxX = -Infinity, minY = Infinity, maxY = -Infinity;
    areas.forEach(function (a) {
      rings(a).forEach(function (ring) {
        asArray(ring).forEach(function (pt) {
          var x = pt[0] * COS_LAT, y = -pt[1];
          if (x < minX) minX = x;
          if (x > maxX) maxX = x;
          if (y < minY) minY = y;
          if (y > maxY) maxY = y;
        });
      });
    });
    var scale = (MAP_WIDTH - 2 * MAP_PAD) / (maxX - minX);
    var height = Math.ceil((maxY - minY) * scale + 2 * MAP_PAD);
    svg.setAttribute('viewBox', '0 0 ' + MAP_WIDTH + ' ' + height);
    svg.setAttribute('preserveAspectRatio', 'xMidYMid meet');

    var g = document.createElementNS(SVG_NS, 'g');
    var byCode = {};
    areas.forEach(function (a) {
      var d = rings(a).map(function (ring) {
        var pts = asArray(ring).map(function (pt) {
          var x = (pt[0] * COS_LAT - minX) * scale + MAP_PAD;
          var y = (-pt[1] - minY) * scale + MAP_PAD;
          return x.toFixed(1) + ' ' + y.toFixed(1);
        });
        return pts.length ? 'M' + pts.join('L') + 'Z' : '';
      }).join('');
      var path = document.createElementNS(SVG_NS, 'path');
      path.setAttribute('d', d);
      path.setAttribute('fill-rule', 'evenodd');
      path.setAttribute('class', 'area');
      path.setAttribute('data-area', String(a.code));
      path.setAttribute('fill', OUTLINE_FILL);
      path.setAttribute('tabindex', '0');
      var title = document.createElementNS(SVG_NS, 'title');
      title.textContent = str(a.name) + ' (' + a.code + ')';
      path.appendChild(title);
      var show = function () { setText('map-info', title.textContent); };
      var hide = function () { setText('map-info', '\u00a0'); };
      path.addEventListener('mouseenter', show);
      path.addEventListener('focus', show);
      path.addEventListener('mouseleave', hide);
      path.addEventListener('blur', hide);
      g.appendChild(path);
      byCode[a.code] = { area: a, path: path, title: title };
    });
    svg.replaceChildren(g);
    geo = { areas: areas, byCode: byCode };
  }

  function valueLabel(map) { return map && map.value_label != null ? String(map.value_label) : 'value'; }

  function renderMap(state) {
    if (!geo) return false;
    var map = state.map && typeof state.map === 'object' ? state.map : null;
    var note = $('map-note');
    var legend = $('map-legend');

    if (!map) {
      Object.keys(geo.byCode).forEach(function (code) {
        var e = geo.byCode[code];
        e.path.setAttribute('fill', OUTLINE_FILL);
        e.path.dataset.value = '';
        e.title.textContent = str(e.area.name) + ' (' + code + '): no prediction yet';
      });
      note.hidden = false;
      setText('map-caption', 'no prediction yet');
      legend.replaceChildren();
      return true;
    }

    var values = {};
    asArray(map.areas).forEach(function (a) {
      if (a && isNum(a.area)) values[a.area] = a;
    });
    var present = Object.keys(values).map(function (k) { return values[k].value; }).filter(isNum);
    var lo = isNum(map.min) ? map.min : (present.length ? Math.min.apply(null, present) : 0);
    var hi = isNum(map.max) ? map.max : (present.length ? Math.max.apply(null, present) : 1);
    var label = valueLabel(map);
    var missing = 0;

    Object.keys(geo.byCode).forEach(function (code) {
      var e = geo.byCode[code];
      var v = values[code];
      var head = str(e.area.name) + ' (' + code + '): ';
      if (v && isNum(v.value)) {
        var t = hi > lo ? (v.value - lo) / (hi - lo) : 0.5;
        e.path.setAttribute('fill', rampColor(t));
        e.path.dataset.value = String(v.value);
        var parts = [fmtValue(v.value) + ' ' + label];
        if (v.level != null) parts.push('level ' + str(v.level));
        if (v.station != null) parts.push('station ' + str(v.station));
        e.title.textContent = head + parts.join(', ');
      } else {
        missing += 1;
        e.path.setAttribute('fill', NO_DATA_FILL);
        e.path.dataset.value = '';
        e.title.textContent = head + 'no prediction';
      }
    });
    note.hidden = true;

    var cap = ['model of round ' + fmtInt(map.round)];
    if (map.period != null) cap.push('period ' + String(map.period));
    if (map.task != null) cap.push('task ' + String(map.task));
    setText('map-caption', cap.join(' · '));

    var bar = el('div', { className: 'legend-bar' });
    bar.style.background = 'linear-gradient(to right, ' + RAMP.join(', ') + ')';
    var mid = (lo + hi) / 2;
    var scaleBox = el('div', { className: 'legend-scale' }, [
      el('div', { className: 'legend-title', text: label }),
      bar,
      el('div', { className: 'legend-ticks' }, [
        el('span', { text: fmtValue(lo) }), el('span', { text: fmtValue(mid) }), el('span', { text: fmtValue(hi) })
      ])
    ]);
    var parts = [scaleBox];
    if (missing > 0) {
      parts.push(el('span', { className: 'legend-nodata' }, [
        el('span', { className: 'legend-swatch' }), el('span', { text: 'no prediction (' + missing + ')' })
      ]));
    }
    legend.replaceChildren.apply(legend, parts);
    return true;
  }

  // ---------- state handling ----------

  function render() {
    var state = app.state;
    if (!state) return;
    try {
      renderHeader(state);
      renderProgress(state);
      renderSummary(state);
      renderStations(state);
      renderRounds(state);
      var mapped = renderMap(state);
      renderCharts(state);
      setError('render', null);
      app.renders += 1;
      if (mapped) document.body.dataset.ready = '1';
    } catch (e) {
      setError('render', 'could not show the state: ' + errText(e));
    }
  }

  function accept(state, source) {
    if (!state || typeof state !== 'object' || Array.isArray(state)) {
      setError(source, 'the server sent a state that is not an object');
      return;
    }
    var cur = app.state;
    if (cur && source === 'fetch' && cur.run && state.run && cur.run.id === state.run.id &&
        isNum(cur.updated_unix) && isNum(state.updated_unix) && state.updated_unix < cur.updated_unix) {
      return; // an older snapshot than the one the stream already delivered
    }
    setError(source, null);
    if (state.version !== 1) {
      setError('version', 'unexpected state version ' + str(state.version) + ' (this page knows version 1)');
    } else {
      setError('version', null);
    }
    app.state = state;
    render();
  }

  function fetchState() {
    return window.fetch('api/state', { cache: 'no-store', credentials: 'same-origin' })
      .then(function (resp) {
        if (!resp.ok) throw new Error('HTTP ' + resp.status);
        return resp.json();
      })
      .then(function (state) { accept(state, 'fetch'); })
      .catch(function (e) {
        if (!app.state) setError('fetch', 'could not load api/state: ' + errText(e));
      });
  }

  function setConnection(kind, text) {
    var c = $('connection');
    if (!c) return;
    c.dataset.state = kind;
    c.textContent = text;
  }

  function startPolling() {
    if (connection.pollTimer) return;
    connection.pollTimer = window.setInterval(function () {
      if (!connection.live) fetchState();
    }, POLL_MS);
  }

  function stopPolling() {
    if (connection.pollTimer) window.clearInterval(connection.pollTimer);
    connection.pollTimer = null;
  }

  function onStateEvent(ev) {
    var state;
    try {
      state = JSON.parse(ev.data);
    } catch (e) {
      setError('sse', 'the live update could not be read (' + errText(e) + '); waiting for the next one');
      return;
    }
    accept(state, 'sse');
  }

  function connect() {
    connection.retryTimer = null;
    if (typeof window.EventSource !== 'function') {
      setConnection('closed', 'no live updates (polling)');
      startPolling();
      return;
    }
    var es = new window.EventSource('api/events');
    connection.es = es;
    es.addEventListener('open', function () {
      connection.live = true;
      connection.retryMs = RETRY_MIN_MS;
      setConnection('live', 'live');
      stopPolling();
    });
    es.addEventListener('state', onStateEvent);
    es.addEventListener('message', onStateEvent); // unnamed events, should a server send them
    es.addEventListener('error', function () {
      connection.live = false;
      setConnection('reconnecting', 'reconnecting…');
      startPolling();
      if (es.readyState === 2 /* CLOSED: the browser gave up, e.g. after an HTTP error */) {
        es.close();
        if (connection.es === es) connection.es = null;
        if (!connection.retryTimer) {
          connection.retryTimer = window.setTimeout(connect, connection.retryMs);
          connection.retryMs = Math.min(RETRY_MAX_MS, connection.retryMs * 2);
        }
      }
    });
  }

  function loadAreas() {
    return window.fetch('assets/la-areas.json', { credentials: 'same-origin' })
      .then(function (resp) {
        if (!resp.ok) throw new Error('HTTP ' + resp.status);
        return resp.json();
      })
      .then(function (json) {
        buildMap(json);
        setError('areas', null);
        if (app.state) render();
        else renderMapPlaceholder();
      })
      .catch(function (e) {
        setError('areas', 'could not load the area map: ' + errText(e));
      });
  }

  function renderMapPlaceholder() {
    renderMap({ map: null });
    setText('map-caption', 'waiting for the first state…');
  }

  function init() {
    watchResize();
    loadAreas();
    fetchState();
    connect();
    window.setInterval(renderClock, 1000);
  }

  init();
})();
