"""Manifests: which contents, styles, sizes and parameters to render, and where.

Three forms, one result (a ``Manifest`` of ``ItemSpec``s):

* YAML or JSON: contents (paths, folders, globs, or ``s3://``/``gs://``/``file://`` URIs,
  prefixes and globs) × styles × sizes, with parameter defaults and per-match overrides;
* a table (CSV or Parquet), one row per item, for manifests generated from datasets.

Everything is checked before anything renders, and every problem is reported at once
as ``file:line: field: what to do``. Nothing in a manifest is executed or unpickled:
YAML is read with the safe loader and only plain values are accepted.
"""

from __future__ import annotations

import csv
import fnmatch
from collections.abc import Iterable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from nst_engine.engine.config import INITS, SynthesisConfig, coerce
from nst_engine.engine.weights_spec import WeightsSpec
from nst_engine.errors import ConfigError, NSTError, one_line
from nst_engine.planning.sources import (
    DEFAULT_MAX_IMAGES,
    MAX_IMAGES_KEY,
    Listing,
    Stamp,
    list_images,
    locate,
)
from nst_engine.storage.paths import UnsafePathError, safe_relative
from nst_engine.storage.uris import is_uri

DEFAULT_LAYOUT = "{style}/{size}/{content}.png"
LAYOUT_FIELDS = ("style", "size", "content", "content_name", "id")
TOP_LEVEL_KEYS = {
    "name",
    "output",
    "layout",
    "contents",
    "styles",
    "sizes",
    "params",
    "weights",
    "overrides",
    MAX_IMAGES_KEY,
}
#: Engine parameters a manifest may set (everything but the size, which is a manifest axis).
PARAM_FIELDS = {f.name: f for f in fields(SynthesisConfig) if f.name != "size"}
WEIGHTS_FIELDS = {f.name for f in fields(WeightsSpec)}
TABLE_COLUMNS = {"content", "style", "style_weights", "style_name", "size"}


class ManifestError(NSTError):
    """All problems of one manifest; ``str()`` lists one per line, then ``hint`` (what
    to do about them all), which is not counted as a problem."""

    def __init__(self, problems: list[str], hint: str | None = None) -> None:
        self.problems = problems
        self.hint = hint
        noun = "problem" if len(problems) == 1 else "problems"
        lines = [*problems, *([hint] if hint else [])]
        super().__init__(f"{len(problems)} {noun} in the manifest:\n" + "\n".join(lines))


@dataclass(frozen=True)
class StyleSpec:
    name: str
    images: tuple[str, ...]  # absolute paths or URIs
    weights: tuple[float, ...]


@dataclass(frozen=True)
class ItemSpec:
    """One content × style × size before hashing; ``where`` locates it in the manifest."""

    content: str  # absolute path or URI
    content_rel: str  # path relative to its folder/prefix/glob base, for the output layout
    style: StyleSpec
    size: int
    config: SynthesisConfig
    where: str


@dataclass
class Manifest:
    name: str
    source: Path
    output: str | None
    layout: str
    weights: WeightsSpec
    items: list[ItemSpec] = field(default_factory=list)
    #: sizes and modification times learnt while listing folders and globs, so planning
    #: needs no metadata request of its own for those files
    stamps: dict[str, Stamp] = field(default_factory=dict)


class _Problems:
    """Collects ``file:line: field: message`` lines."""

    def __init__(self, source: Path, lines: dict[tuple, int]) -> None:
        self.source = source
        self.lines = lines
        self.items: list[str] = []

    def add(self, path: tuple, message: str) -> None:
        line = None
        for cut in range(len(path), -1, -1):
            if path[:cut] in self.lines:
                line = self.lines[path[:cut]]
                break
        where = f"{self.source}:{line}" if line else str(self.source)
        dotted = ".".join(str(p) if not isinstance(p, int) else f"[{p}]" for p in path).replace(".[", "[")
        problem = f"{where}: {dotted or '(top level)'}: {message}"
        if problem not in self.items:  # e.g. a bad parameter seen once per size
            self.items.append(problem)

    def line_of(self, path: tuple) -> str:
        line = self.lines.get(path)
        return f"{self.source}:{line}" if line else str(self.source)


# ---------------------------------------------------------------------------- reading


def _read_yaml(source: Path) -> tuple[Any, dict[tuple, int]]:
    """Parse with the safe loader, remembering the line of every key and list item."""
    text = source.read_text(encoding="utf-8")
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ManifestError([f"{source}{line}: not valid YAML/JSON ({problem})"]) from None
    finally:
        loader.dispose()
    lines: dict[tuple, int] = {}

    def walk(n: yaml.Node, path: tuple) -> None:
        lines[path] = n.start_mark.line + 1
        if isinstance(n, yaml.MappingNode):
            for key, value in n.value:
                child = (*path, key.value)
                lines[child] = key.start_mark.line + 1
                walk(value, child)
                lines[child] = key.start_mark.line + 1
        elif isinstance(n, yaml.SequenceNode):
            for i, value in enumerate(n.value):
                walk(value, (*path, i))

    if node is not None:
        walk(node, ())
    return data, lines


def load_manifest(path: str | Path, output: str | None = None) -> Manifest:
    """Read and validate a manifest; raises ``ManifestError`` listing every problem."""
    source = Path(path)
    if not source.is_file():
        raise ManifestError([f"{source}: manifest file not found; check the path"])
    suffix = source.suffix.lower()
    if suffix in (".csv", ".parquet"):
        manifest = _load_table(source)
    elif suffix in (".yaml", ".yml", ".json"):
        data, lines = _read_yaml(source)
        manifest = _from_mapping(data, source, lines)
    else:
        raise ManifestError(
            [f"{source}: unknown manifest type {suffix!r}; use .yaml, .json, .csv or .parquet"]
        )
    if output is not None:
        manifest.output = output
    if manifest.output is None:
        manifest.output = str(Path("out") / manifest.name)
    return manifest


# ---------------------------------------------------------------------------- values


def _params(raw: Any, path: tuple, problems: _Problems) -> dict[str, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        problems.add(path, "expected a mapping of engine parameters")
        return {}
    out = {}
    for key, value in raw.items():
        if key == "size":
            problems.add((*path, key), "set sizes with the top-level 'sizes' list")
        elif key not in PARAM_FIELDS:
            problems.add((*path, key), f"unknown parameter; choose from {', '.join(sorted(PARAM_FIELDS))}")
        else:
            try:
                out[key] = coerce(key, value)
            except ConfigError as exc:
                problems.add((*path, key), exc.message)
    return out


def _resolve_init(params: dict[str, Any], base: Path) -> dict[str, Any]:
    """An init image path is relative to the manifest; a URI stays as it is."""
    init = params.get("init")
    if init and init not in INITS:
        return {**params, "init": locate(init, base)}
    return params


def _config(
    size: int,
    layers: list[tuple[tuple, dict[str, Any]]],
    base: Path,
    problems: _Problems,
    size_path: tuple = ("sizes",),
) -> SynthesisConfig | None:
    """The config from ``params`` and the applied overrides' params, in order (``layers``:
    (manifest path, values)); a problem is reported where its field was last set."""
    params: dict[str, Any] = {}
    for _, values in layers:
        params.update(values)
    try:
        return SynthesisConfig(size=size, **_resolve_init(params, base)).validate()
    except ConfigError as exc:
        if exc.field is None:
            problems.add(layers[-1][0], exc.message)
        elif exc.field == "size":
            problems.add(size_path, exc.message)
        else:
            owner = next((path for path, values in reversed(layers) if exc.field in values), layers[-1][0])
            problems.add((*owner, exc.field), exc.message)
    except (NSTError, TypeError) as exc:
        problems.add(layers[-1][0], one_line(exc))
    return None


def _sizes(raw: Any, problems: _Problems) -> list[int]:
    if not isinstance(raw, list) or not raw:
        problems.add(("sizes",), "give a list of sizes in pixels (the longer side), e.g. [256, 512]")
        return []
    sizes = []
    for i, value in enumerate(raw):
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            problems.add(("sizes", i), f"expected a positive whole number of pixels, got {value!r}")
        else:
            sizes.append(value)
    return sizes


def _max_images(raw: Any, problems: _Problems) -> int:
    """The top-level limit on the images one folder or glob entry may expand to."""
    if isinstance(raw, bool) or not isinstance(raw, int) or raw < 1:
        problems.add(
            (MAX_IMAGES_KEY,), f"expected a whole number >= 1 (default {DEFAULT_MAX_IMAGES:,}), got {raw!r}"
        )
        return DEFAULT_MAX_IMAGES
    return raw


def _listing(
    entry: str, base: Path, path: tuple, problems: _Problems, stamps: dict[str, Stamp], max_images: int
) -> Listing:
    """The images of a file, folder/prefix or glob entry; an empty folder or glob, or one
    past ``max_images``, is a problem."""
    listing = list_images(entry, base, max_images)
    if listing.problem:
        problems.add(path, listing.problem)
    elif listing.kind == "glob" and not listing.found:
        problems.add(path, f"glob {entry!r} matches no image files")
    elif listing.kind == "folder" and not listing.found:
        problems.add(path, f"folder {entry!r} holds no image files")
    stamps.update((f.location, f.stamp) for f in listing.found if f.stamp is not None)
    return listing


def _expand_contents(
    raw: Any, base: Path, problems: _Problems, stamps: dict[str, Stamp], max_images: int
) -> list[tuple[str, str, tuple]]:
    """(absolute path or URI, path relative to its base, manifest path) for every content image.
    A missing file is kept: it is reported per item later, so --skip-bad-inputs can skip it."""
    if not isinstance(raw, list) or not raw:
        problems.add(("contents",), "give a list of content images: files, folders, globs or URIs")
        return []
    found: list[tuple[str, str, tuple]] = []
    for i, entry in enumerate(raw):
        path = ("contents", i)
        if not isinstance(entry, str) or not entry:
            problems.add(path, f"expected a path, folder, glob or URI, got {entry!r}")
            continue
        listing = _listing(entry, base, path, problems, stamps, max_images)
        found += [(f.location, f.relative, path) for f in listing.found]
    return found


def _style_name(paths: Iterable[str]) -> str:
    return "+".join(Path(p).stem for p in paths)


def _expand_styles(
    raw: Any, base: Path, problems: _Problems, stamps: dict[str, Stamp], max_images: int
) -> list[tuple[StyleSpec, tuple]]:
    if not isinstance(raw, list) or not raw:
        problems.add(("styles",), "give a list of style images (a path, or {name, images: [{path, weight}]})")
        return []
    styles = []
    for i, entry in enumerate(raw):
        path = ("styles", i)
        if isinstance(entry, str):  # a file, or a folder/prefix/glob of styles, one per image
            listing = _listing(entry, base, path, problems, stamps, max_images)
            for f in listing.found:
                name = Path(entry).stem if listing.kind == "file" else f.relative.rsplit(".", 1)[0]
                styles.append((StyleSpec(name, (f.location,), (1.0,)), path))
            continue
        if not isinstance(entry, dict):
            problems.add(path, "expected a path or a mapping with 'images'")
            continue
        unknown = set(entry) - {"name", "image", "images"}
        if unknown:
            problems.add((*path, sorted(unknown)[0]), "unknown key; use name, image or images")
        images_raw = entry.get("images", [{"path": entry["image"]}] if "image" in entry else None)
        if not isinstance(images_raw, list) or not images_raw:
            problems.add(path, "a style needs 'image: PATH' or 'images: [{path, weight}]'")
            continue
        paths, weights = [], []
        for j, image in enumerate(images_raw):
            ipath = (*path, "images", j)
            if isinstance(image, str):
                image = {"path": image}
            if not isinstance(image, dict) or not isinstance(image.get("path"), str):
                problems.add(ipath, "expected {path: FILE, weight: NUMBER}")
                continue
            try:
                weight = float(image.get("weight", 1.0))
                if weight < 0:
                    raise ValueError
            except (TypeError, ValueError):
                problems.add(
                    (*ipath, "weight"), f"expected a non-negative number, got {image.get('weight')!r}"
                )
                continue
            paths.append(locate(image["path"], base))
            weights.append(weight)
        if paths and sum(weights) <= 0:
            problems.add(path, "style blend weights must have a positive sum")
            continue
        if paths:
            name = entry.get("name") or _style_name(paths)
            styles.append((StyleSpec(str(name), tuple(paths), tuple(weights)), path))
    names = [s.name for s, _ in styles]
    for spec, path in styles:
        if names.count(spec.name) > 1:
            problems.add(path, f"style name {spec.name!r} is used twice; give each style a distinct 'name'")
            break
    return styles


def _weights(
    raw: Any, base: Path, problems: _Problems, stamps: dict[str, Stamp], max_images: int
) -> WeightsSpec:
    if raw is None:
        return WeightsSpec()
    if isinstance(raw, str):
        raw = {"source": raw}
    if not isinstance(raw, dict):
        problems.add(("weights",), "expected {source: embedded|torchvision|FILE, normalize: BOOL}")
        return WeightsSpec()
    unknown = set(raw) - WEIGHTS_FIELDS
    if unknown:
        problems.add(("weights", sorted(unknown)[0]), f"unknown key; use {', '.join(sorted(WEIGHTS_FIELDS))}")
        return WeightsSpec()
    values = dict(raw)
    source = str(values.get("source", "embedded"))
    if is_uri(source):
        problems.add(("weights", "source"), "a weights file must be a local path on every node, not a URI")
    elif source not in ("embedded", "torchvision") and not source.startswith("random"):
        source = str((base / source).resolve())
        if not Path(source).is_file():
            problems.add(("weights", "source"), f"weights file {source} not found")
    values["source"] = source
    if "calibration" in values:
        entries = values["calibration"] or []
        if isinstance(entries, str) or not isinstance(entries, list):
            problems.add(("weights", "calibration"), "expected a list of images, folders, globs or URIs")
            entries = []
        calibration: list[str] = []
        for i, entry in enumerate(entries):
            path = ("weights", "calibration", i)
            if not isinstance(entry, str) or not entry:
                problems.add(path, f"expected a path, folder, glob or URI, got {entry!r}")
                continue
            calibration += [
                f.location for f in _listing(entry, base, path, problems, stamps, max_images).found
            ]
        values["calibration"] = tuple(calibration)
    return WeightsSpec(**values)


def _check_layout(layout: Any, problems: _Problems) -> str:
    if not isinstance(layout, str):
        problems.add(("layout",), "expected a template such as '{style}/{size}/{content}.png'")
        return DEFAULT_LAYOUT
    try:
        sample = layout.format(style="s", size=1, content="c", content_name="c", id="i")
        safe_relative(sample)
    except KeyError as exc:
        problems.add(
            ("layout",), f"unknown field {exc}; use {', '.join('{' + f + '}' for f in LAYOUT_FIELDS)}"
        )
    except (ValueError, IndexError, AttributeError, UnsafePathError) as exc:
        problems.add(("layout",), str(exc))
    if not layout.endswith(".png"):
        problems.add(("layout",), "must end in .png (results are PNG files)")
    return layout


def _matches(match: dict[str, Any], content_rel: str, style: str, size: int) -> bool:
    if "style" in match and str(match["style"]) != style:
        return False
    if "size" in match and match["size"] != size:
        return False
    return not ("content" in match and not fnmatch.fnmatch(content_rel, str(match["content"])))


def _from_mapping(data: Any, source: Path, lines: dict[tuple, int]) -> Manifest:
    problems = _Problems(source, lines)
    base = source.parent
    if not isinstance(data, dict):
        raise ManifestError([f"{source}: expected a mapping with contents, styles and sizes"])
    for key in sorted(set(data) - TOP_LEVEL_KEYS):
        problems.add((key,), f"unknown field; use {', '.join(sorted(TOP_LEVEL_KEYS))}")
    name = str(data.get("name") or source.stem)
    output = data.get("output")
    if output is not None and not isinstance(output, str):
        problems.add(("output",), "expected a folder path or URI")
        output = None
    if isinstance(output, str) and "://" not in output:
        output = str((base / output).resolve())
    layout = _check_layout(data.get("layout", DEFAULT_LAYOUT), problems)
    stamps: dict[str, Stamp] = {}
    max_images = _max_images(data.get(MAX_IMAGES_KEY, DEFAULT_MAX_IMAGES), problems)
    weights = _weights(data.get("weights"), base, problems, stamps, max_images)
    contents = _expand_contents(data.get("contents"), base, problems, stamps, max_images)
    styles = _expand_styles(data.get("styles"), base, problems, stamps, max_images)
    sizes = _sizes(data.get("sizes"), problems)
    defaults = _params(data.get("params"), ("params",), problems)
    size_paths = {size: ("sizes", data["sizes"].index(size)) for size in sizes}
    overrides = []
    for i, entry in enumerate(data.get("overrides") or []):
        path = ("overrides", i)
        if not isinstance(entry, dict) or not isinstance(entry.get("match", {}), dict):
            problems.add(path, "expected {match: {style, size, content}, params: {...}}")
            continue
        bad = set(entry.get("match", {})) - {"style", "size", "content"}
        if bad:
            problems.add((*path, "match", sorted(bad)[0]), "unknown match key; use style, size or content")
        overrides.append((entry.get("match", {}), _params(entry.get("params"), (*path, "params"), problems)))
    items = []
    seen_configs: dict[tuple, SynthesisConfig | None] = {}
    for content, content_rel, cpath in contents:
        for style, spath in styles:
            for size in sizes:
                applied = [
                    j
                    for j, (match, _) in enumerate(overrides)
                    if _matches(match, content_rel, style.name, size)
                ]
                key = (size, tuple(applied))
                if key not in seen_configs:
                    layers = [(("params",), defaults)]
                    layers += [(("overrides", j, "params"), overrides[j][1]) for j in applied]
                    seen_configs[key] = _config(size, layers, base, problems, size_paths[size])
                config = seen_configs[key]
                if config is None:
                    continue
                where = (
                    f"{problems.line_of(cpath)} (content) × {problems.line_of(spath)} (style) × size {size}"
                )
                items.append(ItemSpec(content, content_rel, style, size, config, where))
    size = sizes[0] if sizes else SynthesisConfig.size
    if not seen_configs:  # nothing expanded (contents, styles or sizes are wrong): still check params
        _config(size, [(("params",), defaults)], base, problems)
    used = {j for _, applied in seen_configs for j in applied}
    for j, (_, extra) in enumerate(overrides):
        if j not in used:  # an override that matched nothing still gets its values checked
            _config(size, [(("params",), defaults), (("overrides", j, "params"), extra)], base, problems)
    if problems.items:
        raise ManifestError(problems.items)
    return Manifest(
        name=name, source=source, output=output, layout=layout, weights=weights, items=items, stamps=stamps
    )


def _load_table(source: Path) -> Manifest:
    """CSV or Parquet: one row per item; columns content, style, size, optional
    style_weights and style_name (';'-separated for blends) and any engine parameter."""
    base = source.parent
    if source.suffix.lower() == ".csv":
        with source.open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            rows = list(reader)
            columns = reader.fieldnames or []
        first_line = 2  # header is line 1
    else:
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(source)
        except Exception as exc:  # pyarrow raises several types
            raise ManifestError([f"{source}: not a readable Parquet file ({exc})"]) from None
        rows, columns, first_line = table.to_pylist(), table.column_names, 1
    problems = _Problems(source, {})

    def where(i: int, column: str) -> tuple:
        return (f"row {i + first_line - (1 if first_line == 2 else 0)}", column)

    for column in ("content", "style", "size"):
        if column not in columns:
            problems.add(
                (column,), f"missing column; a table manifest needs {', '.join(sorted(TABLE_COLUMNS))}"
            )
    for column in columns:
        if column not in TABLE_COLUMNS and column not in PARAM_FIELDS:
            problems.add(
                (column,), f"unknown column; use {', '.join(sorted(TABLE_COLUMNS | set(PARAM_FIELDS)))}"
            )
    if problems.items:
        raise ManifestError(problems.items)
    items = []
    for i, row in enumerate(rows):
        line = i + first_line
        label = f"line {line}" if source.suffix.lower() == ".csv" else f"row {i}"
        row_problems_before = len(problems.items)

        def add(column: str, message: str, label: str = label) -> None:
            problems.items.append(f"{source}: {label}: {column}: {message}")

        content = str(row.get("content") or "")
        if not content:
            add("content", "empty; give an image path")
        style_paths = [p.strip() for p in str(row.get("style") or "").split(";") if p.strip()]
        if not style_paths:
            add("style", "empty; give an image path (';' between blended styles)")
        try:
            size_value = float(row.get("size"))
            size = int(size_value)
            if size <= 0 or size != size_value:
                raise ValueError
        except (TypeError, ValueError, OverflowError):
            add("size", f"expected a positive whole number, got {row.get('size')!r}")
            size = 0
        weights_raw = row.get("style_weights")
        try:
            weights = (
                tuple(float(w) for w in str(weights_raw).split(";"))
                if weights_raw not in (None, "")
                else (1.0,) * len(style_paths)
            )
            if len(weights) != len(style_paths):
                raise ValueError(f"give {len(style_paths)} weights, one per style image")
            if weights and (any(w < 0 for w in weights) or sum(weights) <= 0):
                raise ValueError("give non-negative weights with a positive sum")
        except ValueError as exc:
            add("style_weights", str(exc) if "give" in str(exc) else f"expected numbers, got {weights_raw!r}")
            weights = (1.0,) * len(style_paths)
        params = {}
        for column, value in row.items():
            if column in PARAM_FIELDS and column not in TABLE_COLUMNS and value not in (None, ""):
                try:
                    params[column] = coerce(column, value)
                except ConfigError as exc:
                    add(column, exc.message)
        if len(problems.items) > row_problems_before:
            continue
        try:
            config = SynthesisConfig(size=size, **_resolve_init(params, base)).validate()
        except ConfigError as exc:
            add(exc.field or "parameters", exc.message)
            continue
        resolved = tuple(locate(p, base) for p in style_paths)
        style = StyleSpec(str(row.get("style_name") or _style_name(resolved)), resolved, weights)
        # outputs mirror the table's relative paths; paths leaving its folder and URIs keep their name
        relative = Path(content)
        content_rel = (
            relative.name
            if is_uri(content) or relative.is_absolute() or ".." in relative.parts
            else relative.as_posix()
        )
        items.append(ItemSpec(locate(content, base), content_rel, style, size, config, f"{source}: {label}"))
    if problems.items:
        raise ManifestError(problems.items)
    return Manifest(
        name=source.stem,
        source=source,
        output=None,
        layout=DEFAULT_LAYOUT,
        weights=WeightsSpec(),
        items=items,
    )


def manifest_from_dict(data: dict[str, Any], base: Path) -> Manifest:
    """A manifest built in code (as the scaling benchmark does); paths relative to ``base``."""
    return _from_mapping(data, base / "<generated manifest>", {})
