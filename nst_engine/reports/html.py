"""The report's pages: static HTML a person opens from disk, with no server and no network.

Every page carries its own CSS and one tiny script (allowed by hash in the page's
Content-Security-Policy, so nothing else can run even if an escape were missed). All
text from the results (paths, names, errors) goes through ``esc``. Thumbnails are JPEGs
under ``thumbs/`` named by their source's (path, size, mtime), so a rerun re-encodes only
what changed; content and style thumbnails are shared by every item that uses them.
"""

from __future__ import annotations

import base64
import hashlib
import html
import io
import math
import os
import posixpath
import re
import statistics
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pyarrow.fs as pafs
from PIL import Image

from nst_engine.reports.plots import Plot
from nst_engine.reports.scaling import DeviceFit, format_k
from nst_engine.reports.selection import Results
from nst_engine.reports.video import ClipSummary, clip_summaries
from nst_engine.storage.files import write_atomic
from nst_engine.storage.roots import OutputRoot

THUMBS_DIR = "thumbs"
THUMB_SIZE = 256
MIB = 1024**2
THUMB_NAME = re.compile(r"[0-9a-f]{24}\.jpg")


@dataclass
class ReportSummary:
    """What the report wrote; the CLI prints it and tests check it."""

    index: Path
    items: int
    pages: int
    plots: list[str]
    thumbs_created: int
    thumbs_reused: int


CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:0 auto;padding:1em 2em;max-width:1400px;color:#222}
h1{font-size:1.5em;margin:.2em 0}h2{margin-top:1.6em;border-bottom:1px solid #ddd}
nav{margin:.6em 0}nav a,nav span,nav strong{margin-right:.6em}
.counts span{display:inline-block;margin-right:1.2em;padding:.2em .6em;border-radius:4px;background:#eee}
.counts .failed{background:#fdd}.counts .ok{background:#dfd}
figure{margin:0}figure img{width:100%;border:1px solid #ddd}
.plots{display:grid;grid-template-columns:repeat(auto-fill,minmax(460px,1fr));gap:1em}
table{border-collapse:collapse;margin:.5em 0}td,th{border-bottom:1px solid #e4e4e4;padding:.3em .6em;
text-align:left;vertical-align:top}th{background:#f6f6f6}td.num{text-align:right}
.gallery td{padding:.5em}.thumb{max-width:200px;max-height:200px;min-width:96px;min-height:96px;
object-fit:contain;background:#fafafa;border:1px solid #ddd}.blend .thumb{max-width:96px;max-height:96px}
.missing{display:inline-block;width:96px;height:96px;line-height:96px;text-align:center;color:#999;
background:#f3f3f3;border:1px dashed #ccc;font-size:12px}
.label{font-weight:600;margin-bottom:.3em;word-break:break-all}
dl{display:grid;grid-template-columns:auto 1fr;gap:.1em .8em;margin:0}dt{color:#777}dd{margin:0}
pre{white-space:pre-wrap;word-break:break-word;margin:0;max-width:70em;font-size:12px}
.muted{color:#777}
"""
# Counts the images that really loaded, for people and for the browser test.
SCRIPT = (
    "addEventListener('load',function(){var a=Array.prototype.slice.call(document.images),"
    "n=a.filter(function(i){return i.complete&&i.naturalWidth>0}).length;"
    "document.body.dataset.loadedImages=n;document.body.dataset.brokenImages=a.length-n;});"
)
SCRIPT_HASH = base64.b64encode(hashlib.sha256(SCRIPT.encode()).digest()).decode()
CSP = (
    "default-src 'none'; img-src 'self' file: data:; style-src 'unsafe-inline'; "
    f"script-src 'sha256-{SCRIPT_HASH}'"
)


def esc(value: object) -> str:
    """Any value as HTML text (also safe inside quoted attributes)."""
    return html.escape("" if value is None else str(value), quote=True)


def href(path: str) -> str:
    """A relative file path as an escaped URL for href/src."""
    return esc(quote(path.replace(os.sep, "/")))


def _num(value: float | None, spec: str = ".3g", unit: str = "") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:{spec}}{unit}"


def _bytes(value: int | None) -> str:
    if not value:
        return "–"
    return f"{value / MIB / 1024:.2f} GiB" if value >= 1024 * MIB else f"{value / MIB:.0f} MiB"


def _when(value: datetime | None) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC") if value else "–"


def label(row: dict[str, Any]) -> str:
    """The item as the CLI names it: content file name × style @ size."""
    return f"{Path(row['content_path'] or '?').name} × {row['style_name']} @ {row['size']}"


class Thumbnails:
    """JPEG thumbnails (longer side at most 256 px) under ``thumbs/``, made once per source version."""

    def __init__(self, report_dir: Path) -> None:
        self.folder = report_dir / THUMBS_DIR
        self.folder.mkdir(parents=True, exist_ok=True)
        self.created = 0
        self.reused = 0
        self._known: dict[str, str | None] = {}

    def prune(self) -> int:
        """Delete thumbnails no page uses any more (sources changed or gone); returns how many.

        Every page is rewritten on each report, so the thumbnails made or reused in this run
        are all that the report refers to.
        """
        used = {Path(t).name for t in self._known.values() if t}
        stale = [p for p in self.folder.glob("*.jpg") if THUMB_NAME.fullmatch(p.name) and p.name not in used]
        for path in stale:
            path.unlink(missing_ok=True)
        return len(stale)

    def __call__(self, source: str) -> str | None:
        """Path of the thumbnail relative to the report, or None when the source is unreadable.
        ``source`` is a local path or a URI on any filesystem pyarrow knows."""
        if source not in self._known:
            self._known[source] = self._make(source)
        return self._known[source]

    def _make(self, source: str) -> str | None:
        try:
            fs, path = _filesystem(source)
            info = fs.get_file_info(path)
            if info.type != pafs.FileType.File:
                return None
            key = f"{source}\n{info.size}\n{info.mtime_ns}"
            name = hashlib.sha256(key.encode()).hexdigest()[:24] + ".jpg"
            target = self.folder / name
            if target.is_file():
                self.reused += 1
                return f"{THUMBS_DIR}/{name}"
            with fs.open_input_file(path) as handle, Image.open(handle) as img:
                img.thumbnail((THUMB_SIZE, THUMB_SIZE))
                rgb = _on_white(img)
        except (OSError, ValueError, Image.DecompressionBombError):
            return None
        buffer = io.BytesIO()
        rgb.save(buffer, format="JPEG", quality=85)
        write_atomic(target, buffer.getvalue())
        self.created += 1
        return f"{THUMBS_DIR}/{name}"


def _filesystem(source: str) -> tuple[pafs.FileSystem, str]:
    if "://" in source:
        return pafs.FileSystem.from_uri(source)
    return pafs.LocalFileSystem(), Path(source).resolve().as_posix()


def _on_white(img: Image.Image) -> Image.Image:
    """RGB for JPEG: transparent parts become white instead of black."""
    if img.mode in ("RGBA", "LA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGB", rgba.size, "white")
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return img.convert("RGB")


def _locate(path: str, root: OutputRoot) -> str:
    """An input path as recorded: a URI or absolute path, else relative to the working
    folder or the output root."""
    if "://" in path or Path(path).is_absolute() or Path(path).exists():
        return path
    return root.display(path)


def _img(thumb: str | None, alt: str, css: str = "thumb") -> str:
    if thumb is None:
        return f'<span class="missing" title="{esc(alt)}">missing</span>'
    return f'<img class="{css}" src="{href(thumb)}" alt="{esc(alt)}" title="{esc(alt)}">'


def page_file(page: int) -> str:
    return "index.html" if page == 1 else f"gallery-{page}.html"


def _page(title: str, body: str) -> str:
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{esc(CSP)}">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        f"<title>{esc(title)}</title><style>{CSS}</style></head>\n<body>\n{body}\n"
        f"<script>{SCRIPT}</script>\n</body></html>\n"
    )


def _pager(page: int, pages: int) -> str:
    """Links to the first, last and nearby gallery pages (167 pages stay one short line)."""
    if pages <= 1:
        return ""
    shown = sorted({1, pages, *range(max(1, page - 3), min(pages, page + 3) + 1)})
    parts = [f'<a href="{page_file(page - 1)}#gallery">‹ previous</a>' if page > 1 else ""]
    last = 0
    for number in shown:
        if number - last > 1:
            parts.append("<span>…</span>")
        parts.append(
            f"<strong>{number}</strong>"
            if number == page
            else f'<a href="{page_file(number)}#gallery">{number}</a>'
        )
        last = number
    parts.append(f'<a href="{page_file(page + 1)}#gallery">next ›</a>' if page < pages else "")
    return f'<nav class="pager">gallery page: {"".join(p for p in parts if p)}</nav>'


def _counts(results: Results) -> str:
    spans = "".join(
        f'<span class="{esc(status)}">{esc(status)} <b>{count}</b></span>'
        for status, count in results.counts.items()
    )
    return (
        f'<p class="counts">{spans}</p><p class="muted">Rows are attempts; the gallery shows '
        f"{len(results.latest_ok)} items (the latest ok attempt of each).</p>"
    )


def _plots(figures: list[Plot]) -> str:
    if not figures:
        return '<h2 id="plots">Plots</h2><p class="muted">No timed results yet.</p>'
    shown = "".join(
        f'<figure><img src="{href(f.file)}" alt="{esc(f.title)}">'
        f"<figcaption>{esc(f.title)}</figcaption></figure>"
        for f in figures
    )
    return f'<h2 id="plots">Plots</h2><div class="plots">{shown}</div>'


def _devices(results: Results, fits: dict[str, DeviceFit]) -> str:
    """One table per device: per size, how many items, how fast, how much memory."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for row in results.ok_rows:
        groups.setdefault((row["device_name"] or "unknown", row["device_type"] or "?"), []).append(row)
    if not groups:
        return '<h2 id="devices">Devices</h2><p class="muted">No ok results yet.</p>'
    out = ['<h2 id="devices">Devices</h2>']
    for (device, kind), rows in sorted(groups.items()):
        fit = fits.get(device)
        sizes = sorted({r["size"] for r in rows if r["size"] is not None})
        peak = max((r["peak_memory_bytes"] or 0 for r in rows), default=0)
        summary = (
            f"{len({r['item_id'] for r in rows})} items · sizes {esc(', '.join(map(str, sizes)) or '–')}"
            f" · peak memory {_bytes(peak)}"
            f" · {'scaling ' + esc(format_k(fit)) if fit is not None else 'no scaling fit'}"
        )
        body = []
        for size in sizes:
            mine = [r for r in rows if r["size"] == size]
            spi = [r["seconds_per_iteration"] for r in mine if r["seconds_per_iteration"] is not None]
            syn = [r["synthesis_seconds"] for r in mine if r["synthesis_seconds"] is not None]
            shapes = Counter(f"{r['width']}×{r['height']}" for r in mine if r["width"])
            body.append(
                f'<tr><td class="num">{size}</td><td class="num">{len({r["item_id"] for r in mine})}</td>'
                f"<td>{esc(', '.join(s for s, _ in shapes.most_common(3)))}</td>"
                f'<td class="num">{_num(statistics.median(spi) if spi else None, ".3g", " s")}</td>'
                f'<td class="num">{_num(statistics.median(syn) if syn else None, ".3g", " s")}</td>'
                f'<td class="num">{_bytes(max(r["peak_memory_bytes"] or 0 for r in mine))}</td></tr>'
            )
        out.append(
            f'<h3>{esc(device)} <span class="muted">({esc(kind)})</span></h3><p>{summary}</p>'
            "<table><tr><th>size</th><th>items</th><th>W×H</th><th>median s/iteration</th>"
            f"<th>median synthesis</th><th>peak memory</th></tr>{''.join(body)}</table>"
        )
    return "".join(out)


def _costs(runs: list[dict[str, Any]]) -> str:
    """What each run held and cost (``runs.parquet``'s bill), newest first: device-hours
    its workers held (busy or idle) and used, its price and cost, per item rendered."""
    billed = [r for r in runs if r["device_seconds_held"] is not None]
    if not billed:
        return '<h2 id="cost">Cost</h2><p class="muted">No run with a bill yet.</p>'
    body = []
    for run in sorted(billed, key=lambda r: r["started_at"], reverse=True):
        cost, rendered = run["cost"], run["rendered"]
        each = cost / rendered if cost is not None and rendered else None
        left = f", {run['budget_left']} left" if run["budget_left"] is not None else ""
        body.append(
            f"<tr><td>{esc(_when(run['started_at']))}</td><td>{esc(run['state'])}{esc(left)}</td>"
            f'<td class="num">{rendered}</td>'
            f'<td class="num">{_num(run["device_seconds_held"] / 3600)}</td>'
            f'<td class="num">{_num((run["device_seconds_busy"] or 0) / 3600)}</td>'
            f"<td>{esc(run['prices'] or '–')}</td><td>{esc(run['budget'] or '–')}</td>"
            f'<td class="num">{_num(cost, ".4g")}</td>'
            f'<td class="num">{_num(each, ".4g")}</td></tr>'
        )
    priced = [r["cost"] for r in billed if r["cost"] is not None]
    total = f"<p>All runs: {_num(sum(priced), '.4g')} at their prices.</p>" if priced else ""
    return (
        f'<h2 id="cost">Cost</h2>{total}<table><tr><th>run started</th><th>state</th><th>rendered</th>'
        "<th>device-hours held</th><th>device-hours busy</th><th>prices (per device-hour)</th>"
        f"<th>budget</th><th>cost</th><th>per item</th></tr>{''.join(body)}</table>"
    )


def _video(results: Results, out_dir: Path) -> str:
    """Per stylized clip (clip × style × size): frames done and failed, shots, the time of
    a shot's first frame and of those after it (warm-started: the ratio should be small),
    the flow's time, the temporal loss, and the mp4. Nothing when no row is a frame."""
    clips = clip_summaries(results)
    if not clips:
        return ""
    body = "".join(
        f"<tr><td>{_clip_link(c, results, out_dir)}</td>"
        f'<td title="{esc(c.source)}">{esc(posixpath.basename(c.source))}</td><td>{esc(c.style)}</td>'
        f'<td class="num">{c.size}</td><td class="num">{c.ok}</td><td class="num">{c.failed}</td>'
        f'<td class="num">{c.shots}</td><td class="num">{_num(c.first_seconds, ".3g", " s")}</td>'
        f'<td class="num">{_num(c.later_seconds, ".3g", " s")}</td>'
        f'<td class="num">{_num(c.ratio, ".2f")}</td>'
        f'<td class="num">{_num(c.flow_seconds, ".3g", " s")}</td>'
        f'<td class="num">{_num(c.temporal_loss, ".4g")}</td></tr>'
        for c in clips
    )
    return (
        f'<h2 id="video">Video ({len(clips)} stylized clips)</h2><p class="muted">Frames after the '
        "first of a shot start from the frame before, warped by the optical flow (Ruder et al. 2016). "
        "Seconds are mean synthesis seconds of the latest ok frames.</p>"
        '<table class="video"><tr><th>clip</th><th>source</th><th>style</th><th>size</th>'
        "<th>frames ok</th><th>failed</th><th>shots</th><th>first frame</th><th>later frames</th>"
        f"<th>later / first</th><th>flow</th><th>temporal loss</th></tr>{body}</table>"
    )


def _clip_link(clip: ClipSummary, results: Results, out_dir: Path) -> str:
    """The clip's mp4, linked when it exists in a local output root (as the gallery links images)."""
    if results.root.is_local and results.root.exists(clip.clip):
        link = os.path.relpath(results.root.display(clip.clip), out_dir.resolve())
        return f'<a href="{href(link)}" title="play the stylized clip">{esc(clip.clip)}</a>'
    return f'{esc(clip.clip)} <span class="muted">(not encoded)</span>'


def _failures(results: Results) -> str:
    failures = results.failures
    if not failures:
        return '<h2 id="failures">Failures</h2><p class="muted">No failed attempts.</p>'
    done = {r["item_id"] for r in results.latest_ok}
    rows = "".join(
        f"<tr><td>{esc(_when(r['finished_at']))}</td>"
        f'<td title="{esc(r["content_path"])}">{esc(label(r))}</td><td class="num">{esc(r["attempt"])}</td>'
        f"<td><pre>{esc(r['error'] or '(no error text)')}</pre></td>"
        f"<td>{'ok later' if r['item_id'] in done else 'not done'}</td></tr>"
        for r in failures
    )
    table = (
        "<table><tr><th>finished</th><th>item</th><th>attempt</th><th>error</th><th>item now</th></tr>"
        f"{rows}</table>"
    )
    opened = " open" if len(failures) <= 20 else ""
    return (
        f'<h2 id="failures">Failures ({len(failures)})</h2>'
        f"<details{opened}><summary>{len(failures)} failed attempts</summary>{table}</details>"
    )


def _gallery_row(row: dict[str, Any], results: Results, thumbs: Thumbnails, out_dir: Path) -> str:
    content = _locate(row["content_path"] or "", results.root)
    styles = [_locate(p, results.root) for p in row["style_paths"] or []]
    style_cells = "".join(_img(thumbs(p), p) for p in styles) or _img(None, "no style")
    output = results.root.display(row["output_path"] or "")
    thumb = thumbs(output)
    result = _img(thumb, output)
    if thumb is not None and results.root.is_local:  # a browser opens local files only
        link = os.path.relpath(output, out_dir.resolve())
        result = f'<a href="{href(link)}" title="open the full-size image">{result}</a>'
    blend = ' class="blend"' if len(styles) > 1 else ""
    info = (
        f'<div class="label">{esc(label(row))}</div><dl>'
        f"<dt>size</dt><dd>{esc(row['width'])}×{esc(row['height'])} px (longer side {esc(row['size'])})</dd>"
        f"<dt>iterations</dt><dd>{esc(row['iterations'])} of {esc(row['iterations_requested'])}"
        f" (stop: {esc(row['stop_reason'])})</dd>"
        f"<dt>time</dt><dd>{_num(row['synthesis_seconds'], '.3g', ' s')} synthesis · "
        f"{_num(row['seconds_per_iteration'], '.3g', ' s')}/iteration</dd>"
        f"<dt>final loss</dt><dd>total {_num(row['final_total_loss'], '.4g')} · content "
        f"{_num(row['final_content_loss'], '.4g')} · style {_num(row['final_style_loss'], '.4g')}</dd>"
        f"{_schedule(row)}{_tiles(row)}"
        f"<dt>device</dt><dd>{esc(row['device_name'])}{_batch(row)}</dd>"
        f"<dt>finished</dt><dd>{esc(_when(row['finished_at']))}</dd></dl>"
    )
    return (
        f'<tr class="item"><td>{_img(thumbs(content), content)}</td><td{blend}>{style_cells}</td>'
        f"<td>{result}</td><td>{info}</td></tr>"
    )


def _gallery(rows: list[str], page: int, pages: int, total: int) -> str:
    if not rows:
        return '<h2 id="gallery">Gallery</h2><p class="muted">No finished items.</p>'
    pager = _pager(page, pages)
    return (
        f'<h2 id="gallery">Gallery <span class="muted">(page {page} of {pages}, {total} items)</span></h2>'
        f'{pager}<table class="gallery"><tr><th>content</th><th>style</th><th>result</th>'
        "<th>details</th></tr>"
        f"{''.join(rows)}</table>{pager}"
    )


def write_pages(
    results: Results,
    fits: dict[str, DeviceFit],
    figures: list[Plot],
    out_dir: Path,
    page_size: int,
    runs: list[dict[str, Any]] | None = None,
) -> ReportSummary:
    """index.html (overview + first gallery page) and gallery-N.html for the other pages;
    ``runs``: the rows of ``runs.parquet``, for the cost."""
    thumbs = Thumbnails(out_dir)
    items = results.latest_ok
    pages = max(1, math.ceil(len(items) / page_size))
    source = esc(results.source)
    header = (
        f'<h1>Style transfer report</h1><p class="muted">{source} · made {esc(_when(datetime.now(UTC)))}</p>'
    )
    overview_nav = (
        '<nav><a href="index.html#plots">plots</a><a href="index.html#devices">devices</a>'
        '<a href="index.html#cost">cost</a><a href="index.html#failures">failures</a>'
        '<a href="index.html#gallery">gallery</a></nav>'
    )
    video = _video(results, out_dir)
    if video:
        overview_nav = overview_nav.replace("</nav>", '<a href="index.html#video">video</a></nav>')
    for page in range(1, pages + 1):
        chunk = items[(page - 1) * page_size : page * page_size]
        gallery = _gallery(
            [_gallery_row(r, results, thumbs, out_dir) for r in chunk], page, pages, len(items)
        )
        if page == 1:
            body = header + overview_nav + _counts(results) + _plots(figures)
            body += video + _devices(results, fits) + _costs(runs or []) + _failures(results) + gallery
        else:
            body = header + overview_nav + gallery
        write_atomic(
            out_dir / page_file(page),
            _page(f"nst report: {posixpath.basename(results.source)} ({page})", body).encode(),
        )
    for stale in out_dir.glob("gallery-*.html"):  # pages left by an earlier, longer report
        number = stale.stem.removeprefix("gallery-")
        if number.isdigit() and int(number) > pages:
            stale.unlink()
    thumbs.prune()
    return ReportSummary(
        out_dir / "index.html", len(items), pages, [f.file for f in figures], thumbs.created, thumbs.reused
    )


def _schedule(row: dict) -> str:
    """The coarse-to-fine schedule of a multi-scale item (nothing for the paper's one scale)."""
    schedule = row.get("scale_schedule") or ""
    if "," not in schedule:
        return ""
    steps = " → ".join(part.replace(":", " px × ") + " it" for part in schedule.split(","))
    return f"<dt>scales</dt><dd>{esc(steps)}</dd>"


def _tiles(row: dict) -> str:
    """The tiles a synthesis too large for its device ran in."""
    tile = row.get("tile") or 0
    return f"<dt>tiles</dt><dd>{esc(row.get('tiles'))} of {esc(tile)} px</dd>" if tile else ""


def _batch(row: dict) -> str:
    """How many syntheses shared the item's evaluations, when more than one."""
    size = row.get("batch_size") or 1
    return f" · in a batch of {esc(size)}" if size > 1 else ""
