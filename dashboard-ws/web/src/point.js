// The point panel: the selected point's level, depth, rate of rise and predicted time to the
// next level, its five-level chain (phones masked for viewers by the server), its plan, and
// charts of the last 6 hours of depth and rain (/api/points/{id}/history).

import uPlot from 'uplot';
import { t } from './i18n.js';
import { getJson } from './session.js';
import { clockText } from './incidents.js';
import { liveDepth } from './store.js';

const esc = (s) => String(s ?? '').replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' })[c]);
const fmt = (v, d = 1) => (typeof v === 'number' ? v.toFixed(d) : '–');
const LEVEL_COLOURS = { blue: '#3d8bfd', yellow: '#f5c400', orange: '#ff8a00', red: '#ff3030' };
const HISTORY_EVERY_MS = 15000;

export function createPointPanel(el, store) {
  let selected = null;
  let detail = null;
  let history = null;
  let charts = [];
  let timer = null;

  async function load(id) {
    const [d, h] = await Promise.all([
      getJson(`/api/points/${encodeURIComponent(id)}`).catch(() => null),
      getJson(`/api/points/${encodeURIComponent(id)}/history?hours=6`).catch(() => null),
    ]);
    if (selected !== id) return;
    detail = d;
    history = h;
    render(true);
  }

  function select(id) {
    selected = id;
    detail = null;
    history = null;
    clearInterval(timer);
    timer = setInterval(() => selected && load(selected), HISTORY_EVERY_MS);
    render(true);
    load(id);
  }

  function chart(target, title, series, thresholds, bars) {
    const w = Math.max(200, target.clientWidth || 380);
    const xs = series.map((p) => p[0] / 1000);
    const ys = series.map((p) => p[1]);
    const lines = Object.entries(thresholds || {});
    const data = [xs, ys, ...lines.map(([, v]) => xs.map(() => v))];
    const opts = {
      title,
      width: w,
      height: 130,
      legend: { show: false },
      cursor: { show: false },
      scales: { x: { time: true } },
      axes: [
        { stroke: '#9fb3c8', grid: { stroke: '#22364d' }, values: (u, v) => v.map((s) => clockText(s * 1000).slice(0, 5)) },
        { stroke: '#9fb3c8', grid: { stroke: '#22364d' }, size: 40 },
      ],
      series: [
        {},
        bars
          ? { stroke: '#5fb3ff', fill: 'rgba(95,179,255,0.45)', paths: uPlot.paths.bars({ size: [0.9, 6] }), points: { show: false } }
          : { stroke: '#5fd3ff', width: 2, fill: 'rgba(95,211,255,0.12)', points: { show: false } },
        ...lines.map(([l]) => ({ stroke: LEVEL_COLOURS[l], width: 1, dash: [4, 4], points: { show: false } })),
      ],
    };
    return new uPlot(opts, data, target);
  }

  function render(full) {
    const p = selected ? store.points.get(selected) : null;
    if (!p) {
      el.innerHTML = `<p class="empty">${t('point_hint')}</p>`;
      el.dataset.point = '';
      return;
    }
    const forecast =
      p.next_level && typeof p.minutes_to_next === 'number'
        ? t('forecast', { min: p.minutes_to_next.toFixed(0), level: t(`level_${p.next_level}`) })
        : t('no_forecast');
    const live = liveDepth(p);
    const head = `<div class="pp-head">
        <span class="lvl lv-${p.level}">${t(`level_${p.level}`)}</span>
        <b>${esc(p.name)}</b> <span class="kind">${t(`kind_${p.kind}`)} · ${esc(p.sub_district)}</span>
        <span class="ds ds-${p.data_state}">${t(`ds_${p.data_state}`)}</span>
        ${p.closure ? `<span class="badge closure-${p.closure}">${t(`closure_${p.closure}`)}</span>` : ''}
      </div>
      <div class="pp-values">
        ${p.kind !== 'rain_gauge' ? `<div><span>${t('depth')}</span><b class="v-depth">${fmt(p.depth_cm)}</b> cm</div>
        <div><span>${t('rise')}</span><b class="v-rise">${fmt(p.rise_cm_per_min, 2)}</b> cm/min</div>` : ''}
        <div><span>${t('rain_1h')}</span><b>${fmt(p.rain_1h_mm)}</b> mm</div>
        <div class="forecast">${forecast}</div>
        <div><span>${t('last_reading')}</span> ${clockText(p.last_reading_ms)}</div>
        ${live ? `<div class="live" title="${t('live_note')}"><span>${t('live_depth')}</span><b class="v-live">${fmt(live.depth_cm)}</b> cm <small>${clockText(live.ms)} · ${t('live_note')}</small></div>` : ''}
      </div>`;
    if (!full && el.dataset.point === p.id) {
      el.querySelector('.pp-live').innerHTML = head;
      return;
    }
    for (const c of charts) c.destroy();
    charts = [];
    const chain = detail
      ? `<table class="chain"><caption>${t('chain')}</caption>${detail.chain
          .map((c) => `<tr><td>${t(`rung_${c.rung}`)}</td><td>${esc(c.name)}</td><td>${esc(c.title)}</td><td class="phone">${esc(c.phone)}</td></tr>`)
          .join('')}</table>
         ${detail.plan ? `<p class="plan"><b>${t('plan')}</b> ${esc(detail.plan)}</p>` : ''}`
      : '';
    el.dataset.point = p.id;
    el.innerHTML = `<div class="pp-live">${head}</div>
      <div class="charts"><div class="chart depth"></div><div class="chart rain"></div></div>
      ${chain}`;
    if (history) {
      if (p.kind !== 'rain_gauge') {
        const tgt = el.querySelector('.chart.depth');
        if (history.depth.length) charts.push(chart(tgt, t('chart_depth'), history.depth, history.thresholds, false));
        else tgt.textContent = `${t('chart_depth')}: ${t('no_data')}`;
      }
      const tgt = el.querySelector('.chart.rain');
      // One bar per 10 minutes: the rolling 10-minute total at each 10-minute mark.
      const rain = history.rain_10m.filter(([ms]) => Math.round(ms / 60000) % 10 === 0);
      if (rain.length) charts.push(chart(tgt, t('chart_rain'), rain, null, true));
      else tgt.textContent = `${t('chart_rain')}: ${t('no_data')}`;
    }
  }

  return { select, render: () => render(false), relabel: () => render(true), selected: () => selected };
}
