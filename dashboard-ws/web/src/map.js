// The district map: Leaflet with no tile server (the wall has no internet). Sub-district
// outlines come as GeoJSON from /api/geo; points are HTML markers coloured by level, silent
// ones grey, hatched and marked 失联, underpasses with their closure state.

import L from 'leaflet';
import { t } from './i18n.js';
import { getJson } from './session.js';
import { liveDepth } from './store.js';

const fmt = (v, d = 1) => (typeof v === 'number' ? v.toFixed(d) : '–');

function markerHtml(p) {
  const silent = p.data_state === 'silent';
  const badge = p.kind === 'underpass' && p.closure ? `<span class="badge closure-${p.closure}">${t(`closure_${p.closure}`)}</span>` : '';
  const lost = silent ? `<span class="badge lost">${t('ds_silent')}</span>` : '';
  return `<div class="pm kind-${p.kind} lv-${p.level} ds-${p.data_state}${silent ? ' silent' : ''}" data-point="${p.id}" data-level="${p.level}" data-state="${p.data_state}"${p.closure ? ` data-closure="${p.closure}"` : ''}><span class="shape"></span>${badge}${lost}</div>`;
}

function tooltip(p) {
  const rows = [`<b>${p.name}</b> · ${t(`kind_${p.kind}`)}`, `${t(`level_${p.level}`)} · ${t(`ds_${p.data_state}`)}`];
  if (p.depth_cm != null) rows.push(`${t('depth')} ${fmt(p.depth_cm)} cm · ${t('rise')} ${fmt(p.rise_cm_per_min, 2)} cm/min`);
  const live = liveDepth(p);
  if (live) rows.push(`${t('live_depth')} ${fmt(live.depth_cm)} cm (${t('live_note')})`);
  if (p.rain_1h_mm != null) rows.push(`${t('rain_1h')} ${fmt(p.rain_1h_mm)} mm`);
  if (p.closure) rows.push(`${t('closure')}: ${t(`closure_${p.closure}`)}`);
  return rows.join('<br>');
}

export function createMap(el, store, { onSelect }) {
  const map = L.map(el, {
    zoomControl: true,
    attributionControl: false,
    zoomSnap: 0.25,
    preferCanvas: false,
  });
  const markers = new Map();
  const drawn = new Map();
  let fitted = false;
  const outlines = L.layerGroup().addTo(map);

  getJson('/api/geo')
    .then((geo) => {
      L.geoJSON(geo, {
        style: { color: '#4a7bb7', weight: 1.5, fillColor: '#1c3a5e', fillOpacity: 0.25, dashArray: '4 3' },
        onEachFeature: (f, layer) => layer.bindTooltip(f.properties.name, { permanent: true, direction: 'center', className: 'sd-label' }),
      }).addTo(outlines);
    })
    .catch(() => {});

  function render() {
    const pts = [...store.points.values()];
    if (!fitted && pts.length) {
      map.fitBounds(L.latLngBounds(pts.map((p) => [p.lat, p.lon])).pad(0.08));
      fitted = true;
    }
    for (const p of pts) {
      const html = markerHtml(p);
      let m = markers.get(p.id);
      if (!m) {
        m = L.marker([p.lat, p.lon], {
          icon: L.divIcon({ className: 'pm-wrap', html, iconSize: [22, 22], iconAnchor: [11, 11] }),
          riseOnHover: true,
          keyboard: false,
        });
        m.on('click', () => onSelect(p.id));
        m.bindTooltip(tooltip(p), { direction: 'top', offset: [0, -10] });
        m.addTo(map);
        markers.set(p.id, m);
        drawn.set(p.id, html);
        continue;
      }
      if (drawn.get(p.id) !== html) {
        m.setIcon(L.divIcon({ className: 'pm-wrap', html, iconSize: [22, 22], iconAnchor: [11, 11] }));
        drawn.set(p.id, html);
      }
      m.setTooltipContent(tooltip(p));
      // Red and silent points stay on top of the others.
      m.setZIndexOffset(p.level === 'red' ? 1000 : p.data_state === 'silent' ? 500 : 0);
    }
  }

  function relabel() {
    drawn.clear();
    render();
  }

  return { render, relabel, invalidate: () => map.invalidateSize() };
}
