// The incident panel: most severe first, each with its escalation ladder (who was told at
// which rung, countdowns to the next step, acknowledgements and check-ins), closure state,
// timeline, and for commanders the action buttons. Viewers get no buttons at all.

import { t, lang } from './i18n.js';
import { sortedIncidents, serverNow } from './store.js';
import { act } from './session.js';

const esc = (s) => String(s ?? '').replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' })[c]);

export function clockText(ms) {
  if (ms == null) return '–';
  const d = new Date(ms);
  return d.toLocaleTimeString(lang() === 'en' ? 'en-GB' : 'zh-CN', { hour12: false });
}

export function durationText(ms) {
  const s = Math.max(0, Math.round(ms / 1000));
  const m = Math.floor(s / 60);
  return m > 0 ? `${m}${t('minutes')}${String(s % 60).padStart(2, '0')}${t('seconds')}` : `${s}${t('seconds')}`;
}

/// The countdown of one step, from its deadline on the server's clock.
function countdown(step, now) {
  if (step.deadline_ms == null || !(step.state === 'pending' || step.state === 'acknowledged')) return '';
  const left = step.deadline_ms - now;
  const what = step.state === 'pending' ? t('ack_due') : t('checkin_due');
  if (left <= 0) return `<span class="due overdue">${t('overdue')}</span>`;
  return `<span class="due">${what} <b>${durationText(left)}</b></span>`;
}

function stepRow(inc, step, store, now) {
  const phone = store.people[step.person]?.phone ?? '';
  const closable = inc.closure && inc.closure.stage === 'suggested';
  let buttons = '';
  if (store.canAct) {
    const b = [];
    if (step.state === 'pending') b.push(`<button class="act" data-act="acknowledge" data-person="${esc(step.person)}">${t('btn_ack')}</button>`);
    if (step.state === 'pending' || step.state === 'acknowledged') b.push(`<button class="act" data-act="check_in" data-person="${esc(step.person)}">${t('btn_checkin')}</button>`);
    if (closable && !(inc.closure.confirmed_by || []).includes(step.person)) {
      b.push(`<button class="act" data-act="confirm_closure" data-person="${esc(step.person)}">${t('btn_confirm_closure')}</button>`);
    }
    buttons = `<td class="acts">${b.join('')}</td>`;
  }
  const times = [
    step.acked_ms ? `${t('step_acknowledged')} ${clockText(step.acked_ms)}` : '',
    step.checked_in_ms ? `${t('step_checked_in')} ${clockText(step.checked_in_ms)}` : '',
  ].filter(Boolean).join(' · ');
  return `<tr class="step st-${step.state}" data-step="${esc(step.id)}" data-person="${esc(step.person)}" data-state="${step.state}">
    <td>${t(`rung_${step.rung}`)}<small> ${t(`level_${step.level}`)}${step.loop_no ? ` #${step.loop_no + 1}` : ''}</small></td>
    <td>${esc(step.name)}</td>
    <td class="phone">${esc(phone)}</td>
    <td>${clockText(step.notified_ms)}</td>
    <td class="state">${t(`step_${step.state}`)}${times ? `<small>${times}</small>` : ''}</td>
    <td class="next" data-deadline="${step.deadline_ms ?? ''}">${countdown(step, now)}</td>
    ${buttons}
  </tr>`;
}

function card(inc, store, now) {
  const p = store.points.get(inc.point_id) || { name: inc.point_id, kind: '' };
  const escalating = !inc.on_site_ms && (inc.steps || []).some((s) => s.state === 'pending' || s.state === 'acknowledged');
  const closure = inc.closure
    ? `<div class="closure closure-${inc.closure.stage}">${t('closure')}: <b>${t(`closure_${inc.closure.stage}`)}</b>${(inc.closure.confirmed_by || []).length ? ` (${inc.closure.confirmed_by.length}/2)` : ''}</div>`
    : '';
  // The live part of the ladder (steps whose timers run, or who are on site) in full;
  // finished steps (escalated past, stopped) folded below, newest first.
  const all = inc.steps || [];
  const live = all.filter((s) => s.state === 'pending' || s.state === 'acknowledged' || s.state === 'checked_in');
  const done = all.filter((s) => !live.includes(s)).reverse();
  const steps = live.map((s) => stepRow(inc, s, store, now)).join('');
  const past = done.length
    ? `<details class="past-steps"><summary>${t('past_steps', { n: done.length })}</summary><table class="steps"><tbody>${done.map((s) => stepRow(inc, s, store, now)).join('')}</tbody></table></details>`
    : '';
  // Operator actions always stay in view; of the automatic lines, the newest eight.
  const lines = inc.timeline || [];
  const auto = lines.filter((l) => !l.by).slice(-8);
  const timeline = lines
    .filter((l) => l.by || auto.includes(l))
    .reverse()
    .map((l) => `<li data-what="${esc(l.what)}"${l.by ? ` data-by="${esc(l.by)}"` : ''}><time>${clockText(l.at_ms)}</time> ${esc(l.detail)}${l.by ? ` <span class="by">— ${esc(l.by)}</span>` : ''}</li>`)
    .join('');
  let actions = '';
  if (store.canAct) {
    const a = [`<button class="act" data-act="note">${t('btn_note')}</button>`];
    // On site for the point owner (A post): whoever is there, escalation stops.
    const owner = all.find((s) => s.rung === 'owner_a');
    if (!inc.on_site_ms && owner) {
      a.unshift(`<button class="act" data-act="check_in" data-person="${esc(owner.person)}">${t('btn_checkin')} · ${esc(owner.name)}</button>`);
    }
    if (inc.closure) {
      const st = inc.closure.stage;
      if (st === 'closed') a.push(`<button class="act" data-act="receding">${t('btn_receding')}</button>`);
      if (st === 'receding') a.push(`<button class="act" data-act="inspected">${t('btn_inspected')}</button>`);
      if (st === 'inspected' || st === 'receding' || st === 'closed') a.push(`<button class="act" data-act="reopen">${t('btn_reopen')}</button>`);
    }
    actions = `<div class="actions">${a.join('')}</div>
      <form class="note-form" hidden><input name="text" maxlength="2000" placeholder="${t('note_placeholder')}"><button type="submit">${t('send')}</button><button type="button" class="cancel">${t('cancel')}</button></form>
      <div class="act-error" hidden></div>`;
  }
  return `<article class="incident lv-${inc.level}" data-incident="${esc(inc.id)}" data-point="${esc(inc.point_id)}" data-kind="${p.kind}" data-level="${inc.level}" data-escalating="${escalating}">
    <header>
      <span class="lvl lv-${inc.level}">${t(`level_${inc.level}`)}</span>
      <a class="pname" data-select="${esc(inc.point_id)}">${esc(p.name)}</a>
      <span class="kind">${p.kind ? t(`kind_${p.kind}`) : ''} · ${t(`problem_${inc.problem}`)}</span>
      <span class="val">${typeof inc.value === 'number' ? inc.value.toFixed(1) : ''}</span>
      <span class="opened">${t('opened')} ${clockText(inc.opened_at)}</span>
    </header>
    <div class="esc-status ${escalating ? 'running' : inc.on_site_ms ? 'stopped' : 'exhausted'}">${inc.on_site_ms ? t('on_site') : escalating ? t('escalating') : all.length ? t('exhausted') : ''}</div>
    ${closure}
    <table class="steps"${live.length ? '' : ' hidden'}><thead><tr><th>${t('col_rung')}</th><th>${t('col_person')}</th><th>${t('col_phone')}</th><th>${t('col_notified')}</th><th>${t('col_state')}</th><th>${t('col_next')}</th>${store.canAct ? '<th></th>' : ''}</tr></thead><tbody>${steps}</tbody></table>
    ${past}
    ${actions}
    <details class="timeline" open><summary>${t('timeline')}</summary><ol>${timeline}</ol></details>
  </article>`;
}

export function createIncidents(el, store, { onSelect, countEl }) {
  const drawn = new Map();
  // Keep a half-typed note across re-renders.
  let noteOpen = null;

  el.addEventListener('click', async (ev) => {
    const sel = ev.target.closest('[data-select]');
    if (sel) {
      onSelect(sel.dataset.select);
      return;
    }
    const btn = ev.target.closest('button.act');
    if (!btn) return;
    const art = btn.closest('article.incident');
    const id = art.dataset.incident;
    const point = store.points.get(art.dataset.point);
    const kind = btn.dataset.act;
    if (kind === 'note') {
      noteOpen = id;
      const form = art.querySelector('.note-form');
      form.hidden = false;
      form.querySelector('input').focus();
      return;
    }
    const body = {
      acknowledge: { kind: 'acknowledge', person: btn.dataset.person },
      check_in: { kind: 'check_in', person: btn.dataset.person, lat: point?.lat, lon: point?.lon },
      confirm_closure: { kind: 'confirm_closure', person: btn.dataset.person },
      receding: { kind: 'closure_step', stage: 'receding' },
      inspected: { kind: 'closure_step', stage: 'inspected' },
      reopen: { kind: 'reopen', lat: point?.lat, lon: point?.lon },
    }[kind];
    await send(art, id, body, btn);
  });
  el.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const form = ev.target;
    const art = form.closest('article.incident');
    const text = form.querySelector('input').value.trim();
    if (!text) return;
    noteOpen = null;
    await send(art, art.dataset.incident, { kind: 'note', text }, form.querySelector('button'));
    form.hidden = true;
    form.querySelector('input').value = '';
  });
  el.addEventListener('click', (ev) => {
    if (ev.target.matches('.note-form .cancel')) {
      noteOpen = null;
      ev.target.closest('form').hidden = true;
    }
  });

  async function send(art, id, body, btn) {
    const errEl = art.querySelector('.act-error');
    btn.disabled = true;
    try {
      await act(id, body);
      if (errEl) errEl.hidden = true;
    } catch (e) {
      if (errEl) {
        errEl.textContent = `${t('action_failed')}: ${e.message}`;
        errEl.hidden = false;
      }
    } finally {
      btn.disabled = false;
    }
  }

  function render(force) {
    const now = serverNow(store);
    const list = sortedIncidents(store);
    countEl.textContent = String(list.length);
    if (!list.length) {
      el.innerHTML = `<p class="empty">${t('no_incidents')}</p>`;
      drawn.clear();
      return;
    }
    if (el.querySelector('.empty')) el.innerHTML = '';
    const keep = new Set(list.map((i) => i.id));
    for (const art of [...el.querySelectorAll('article.incident')]) {
      if (!keep.has(art.dataset.incident)) {
        art.remove();
        drawn.delete(art.dataset.incident);
      }
    }
    let prev = null;
    for (const inc of list) {
      const key = JSON.stringify([inc.updated_at, inc.level, inc.steps, inc.closure, inc.timeline?.length, inc.on_site_ms, store.canAct]);
      let art = el.querySelector(`article.incident[data-incident="${CSS.escape(inc.id)}"]`);
      if (!art || force || drawn.get(inc.id) !== key) {
        if (art && noteOpen === inc.id && !force) {
          // Someone is typing a note here: leave the card alone until they send it.
        } else {
          const tmp = document.createElement('div');
          tmp.innerHTML = card(inc, store, now);
          const fresh = tmp.firstElementChild;
          if (art) art.replaceWith(fresh);
          art = fresh;
          drawn.set(inc.id, key);
        }
      }
      // Most severe first: move into place.
      if (prev ? prev.nextElementSibling !== art : el.firstElementChild !== art) {
        if (prev) prev.after(art);
        else el.prepend(art);
      }
      prev = art;
    }
  }

  /// Countdowns move every second without rebuilding the cards.
  function tick() {
    const now = serverNow(store);
    for (const td of el.querySelectorAll('td.next[data-deadline]')) {
      const dl = Number(td.dataset.deadline);
      if (!td.dataset.deadline || !td.firstElementChild) continue;
      const b = td.querySelector('b');
      const left = dl - now;
      if (left <= 0) td.innerHTML = `<span class="due overdue">${t('overdue')}</span>`;
      else if (b) b.textContent = durationText(left);
    }
  }

  return { render, tick };
}
