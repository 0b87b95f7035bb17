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
import dataclasses
import fnmatch
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, TypeAdapter, ValidationError

from nst_engine.engine.config import FLOAT32_MAX, INITS, InvalidConfig, SynthesisConfig
from nst_engine.engine.weights_spec import WeightsSpec
from nst_engine.errors import ConfigError, NSTError
from nst_engine.planning.manifest_model import (
    DEFAULT_LAYOUT,
    ManifestFile,
    Match,
    Params,
    StyleEntry,
    StyleItem,
    VideoEntry,
    VideoItem,
    WeightsItem,
    given_params,
)
from nst_engine.planning.sources import (
    DEFAULT_MAX_IMAGES,
    MAX_IMAGES_KEY,
    Listing,
    Stamp,
    is_glob,
    list_images,
    locate,
)
from nst_engine.planning.yaml_files import AliasRefused, NoAliasLoader, problem_of
from nst_engine.storage.paths import check_holdable
from nst_engine.storage.uris import absolute, check_location, is_uri, redact
from nst_engine.validation import NOTHING, message, path_of

#: Engine parameters a manifest may set (everything but the size, which is a manifest axis).
PARAM_FIELDS = Params.model_fields
TABLE_COLUMNS = {"content", "style", "style_weights", "style_name", "size"}
STYLE_ITEM: TypeAdapter[Any] = TypeAdapter(StyleItem)
WEIGHTS_ITEM: TypeAdapter[Any] = TypeAdapter(WeightsItem)
VIDEO_ITEM: TypeAdapter[Any] = TypeAdapter(VideoItem)


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
class VideoOptions:
    """A clip's own settings (``VideoEntry``): a frame sequence's rate, the frames that
    start shots when given, and the iterations of frames after a shot's first."""

    rate: str | None = None
    cuts: tuple[int, ...] | None = None
    later_iterations: int | None = None


@dataclass(frozen=True)
class ItemSpec:
    """One content × style × size before hashing; ``where`` locates it in the manifest.
    With ``video``, the content is a clip, expanded into its frames by planning."""

    content: str  # absolute path or URI
    content_rel: str  # path relative to its folder/prefix/glob base, for the output layout
    style: StyleSpec
    size: int
    config: SynthesisConfig
    where: str
    video: VideoOptions | None = None


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
        self.at_line: dict[str, int] = {}

    def add(self, path: tuple, message: str) -> None:
        line = None
        for cut in range(len(path), -1, -1):
            if path[:cut] in self.lines:
                line = self.lines[path[:cut]]
                break
        where = f"{self.source}:{line}" if line else str(self.source)
        dotted = ".".join(str(p) if not isinstance(p, int) else f"[{p}]" for p in path).replace(".[", "[")
        problem = redact(f"{where}: {dotted or '(top level)'}: {message}")  # a secret never shown
        if problem not in self.items:  # e.g. a bad parameter seen once per size
            self.items.append(problem)
            self.at_line[problem] = line or 0

    def in_order(self) -> list[str]:
        """The problems in the order of their lines in the file (the model finds them in
        the order of its fields, the checks after it section by section)."""
        return sorted(self.items, key=lambda problem: self.at_line.get(problem, 0))

    def line_of(self, path: tuple) -> str:
        line = self.lines.get(path)
        return f"{self.source}:{line}" if line else str(self.source)


# ---------------------------------------------------------------------------- reading


def _read_yaml(source: Path) -> tuple[Any, dict[tuple, int]]:
    """Parse with the safe loader, remembering the line of every key and list item. Aliases
    are refused as the parser meets them (``yaml_files``), so the walk below visits each
    node of the file once: never more nodes than the file has lines' worth."""
    text = source.read_text(encoding="utf-8")
    loader = NoAliasLoader(text)
    try:
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
    except yaml.YAMLError as exc:
        line, problem = problem_of(exc)
        where = f"{source}:{line}" if line else str(source)
        said = problem if isinstance(exc, AliasRefused) else f"not valid YAML/JSON ({problem})"
        raise ManifestError([f"{where}: {said}"]) from None
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
    if output is not None:  # checked as a manifest's own output is: a credential is never passed on
        try:
            manifest.output = check_location(output)
        except ValueError as exc:
            raise ManifestError([f"--output: {exc}"]) from None
    if manifest.output is None:
        manifest.output = str(Path("out") / manifest.name)
    # relative to where the command runs, not to each worker's working directory
    manifest.output = absolute(manifest.output)
    return manifest


# ---------------------------------------------------------------------------- the model's checks


class _Checked:
    """A manifest's data after ``ManifestFile`` has found every problem in it: which parts
    are well-formed, so the checks that follow (files, globs, several parameters at once)
    run on those and a bad entry does not hide the problems of the others."""

    def __init__(self, data: dict[str, Any], problems: _Problems) -> None:
        self.data = data
        self.bad: set[tuple] = set()
        try:
            ManifestFile.model_validate(data)
        except ValidationError as exc:
            for error in exc.errors():
                where, whole = _parameter(path_of(error), data)
                problems.add(where, message(error, ManifestFile, whole))
                self.bad.add(where)

    def ok(self, *path: str | int) -> bool:
        """Nothing wrong at ``path``, below it, or above it (a list that is not a list)."""
        return not any(bad[: len(path)] == path or path[: len(bad)] == bad for bad in self.bad)

    def get(self, key: str, default: Any) -> Any:
        """A top-level value, or ``default`` when it is missing or has a problem."""
        value = self.data.get(key)
        return value if value is not None and self.ok(key) else default

    def entries(self, key: str) -> list[tuple[int, Any]]:
        """The well-formed entries of the list ``key``, with their indices."""
        raw = self.data.get(key)
        if not isinstance(raw, list) or (key,) in self.bad:
            return []
        return [(i, entry) for i, entry in enumerate(raw) if self.ok(key, i)]

    def params(self, path: tuple) -> dict[str, Any]:
        """The well-formed parameters of the ``params`` mapping at ``path``, validated."""
        raw = self.data
        for part in path:
            raw = raw[part] if isinstance(raw, dict | list) and _has(raw, part) else None
        if not isinstance(raw, dict):
            return {}
        good = {key: value for key, value in raw.items() if self.ok(*path, key)}
        return given_params(Params.model_validate(good))


def _has(container: dict | list, part: str | int) -> bool:
    return part in container if isinstance(container, dict) else 0 <= int(part) < len(container)


def _parameter(path: tuple, data: Any) -> tuple[tuple, Any]:
    """Where a problem is reported, and the whole value it lies in: a problem inside one
    engine parameter (an item of ``style_layer_weights``) is that parameter's, as it is for
    the CLI's options."""
    if "params" not in path:
        return path, NOTHING
    cut = path.index("params") + 2
    if len(path) <= cut:
        return path, NOTHING
    value = data
    for part in path[:cut]:
        value = value[part]
    return path[:cut], value


# ---------------------------------------------------------------------------- values


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
        return SynthesisConfig(size=size, **_resolve_init(params, base))
    except ConfigError as exc:
        for problem in exc.problems if isinstance(exc, InvalidConfig) else [exc]:
            if problem.field is None:
                problems.add(layers[-1][0], problem.message)
            elif problem.field == "size":
                problems.add(size_path, problem.message)
            else:
                owner = next(
                    (path for path, values in reversed(layers) if problem.field in values), layers[-1][0]
                )
                problems.add((*owner, problem.field), problem.message)
    return None


def _listing(
    entry: str, base: Path, path: tuple, problems: _Problems, stamps: dict[str, Stamp], max_images: int
) -> Listing:
    """The images of a file, folder/prefix or glob entry; an empty folder or glob, or one
    past ``max_images``, is a problem. (An image whose name no output path can hold is a
    bad input of its items, found when they are expanded: ``items.name_problem``.)"""
    listing = list_images(entry, base, max_images)
    if listing.problem:
        problems.add(path, listing.problem)
    elif listing.kind == "glob" and not listing.found:
        problems.add(path, f"glob {redact(entry)!r} matches no image files")
    elif listing.kind == "folder" and not listing.found:
        problems.add(path, f"folder {redact(entry)!r} holds no image files")
    stamps.update((f.location, f.stamp) for f in listing.found if f.stamp is not None)
    return listing


def _expand_contents(
    entries: list[tuple[int, str]], base: Path, problems: _Problems, stamps: dict[str, Stamp], max_images: int
) -> list[tuple[str, str, tuple]]:
    """(absolute path or URI, path relative to its base, manifest path) for every content image.
    A missing file is kept: it is reported per item later, so --skip-bad-inputs can skip it."""
    found: list[tuple[str, str, tuple]] = []
    for i, entry in entries:
        path = ("contents", i)
        listing = _listing(entry, base, path, problems, stamps, max_images)
        found += [(f.location, f.relative, path) for f in listing.found]
    return found


def _expand_videos(
    entries: list[tuple[int, Any]], base: Path
) -> tuple[list[tuple[str, str, tuple]], dict[str, VideoOptions]]:
    """(location, name for the layout, manifest path) of every clip, and each one's
    options. A clip's name is its file's, or its frame folder's (a pattern: the folder it
    is in); whether it can be read is found when planning opens it."""
    found: list[tuple[str, str, tuple]] = []
    options: dict[str, VideoOptions] = {}
    for i, raw in entries:
        entry = VIDEO_ITEM.validate_python(raw)
        if isinstance(entry, str):
            entry = VideoEntry(path=entry)
        location = locate(entry.path, base)
        parts = [p for p in location.rstrip("/").split("/") if p]
        is_pattern = "%" in parts[-1] or is_glob(parts[-1])
        name = parts[-2] if is_pattern and len(parts) > 1 else parts[-1]
        found.append((location, name, ("videos", i)))
        cuts = tuple(sorted(set(entry.cuts))) if entry.cuts is not None else None
        options[location] = VideoOptions(
            None if entry.rate is None else str(entry.rate), cuts, entry.later_iterations
        )
    return found, options


def _style_name(paths: Iterable[str]) -> str:
    return "+".join(Path(p).stem for p in paths)


def _expand_styles(
    entries: list[tuple[int, Any]], base: Path, problems: _Problems, stamps: dict[str, Stamp], max_images: int
) -> list[tuple[StyleSpec, tuple]]:
    styles = []
    for i, raw in entries:
        path = ("styles", i)
        entry = STYLE_ITEM.validate_python(raw)
        if isinstance(entry, StyleEntry):
            paths = [locate(image, base) for image, _ in entry.parts()]
            weights = tuple(weight for _, weight in entry.parts())
            spec = StyleSpec(entry.name or _style_name(paths), tuple(paths), weights)
            styles.append((spec, path))
            continue
        listing = _listing(entry, base, path, problems, stamps, max_images)  # a file, or one style per image
        for f in listing.found:
            name = Path(entry).stem if listing.kind == "file" else f.relative.rsplit(".", 1)[0]
            styles.append((StyleSpec(name, (f.location,), (1.0,)), path))
    names = [s.name for s, _ in styles]
    for spec, path in styles:
        if names.count(spec.name) > 1:
            problems.add(path, f"style name {spec.name!r} is used twice; give each style a distinct 'name'")
            break
    return styles


def _weights(
    checked: _Checked, base: Path, problems: _Problems, stamps: dict[str, Stamp], max_images: int
) -> WeightsSpec:
    """The network; a weights file is relative to the manifest and must be there, calibration
    entries are expanded like contents."""
    raw = checked.get("weights", None)
    if raw is None:
        return WeightsSpec()
    weights: BaseModel = WEIGHTS_ITEM.validate_python({"source": raw} if isinstance(raw, str) else raw)
    values = weights.model_dump()
    source = values["source"]
    if source not in ("embedded", "torchvision") and not source.startswith("random"):
        values["source"] = source = str((base / source).resolve())
        if not Path(source).is_file():
            problems.add(("weights", "source"), f"weights file {source} not found")
    calibration: list[str] = []
    for i, entry in enumerate(values["calibration"]):
        path = ("weights", "calibration", i)
        calibration += [f.location for f in _listing(entry, base, path, problems, stamps, max_images).found]
    values["calibration"] = tuple(calibration)
    return WeightsSpec(**values)


def _matches(match: Match, content_rel: str, style: str, size: int) -> bool:
    if match.style is not None and match.style != style:
        return False
    if match.size is not None and match.size != size:
        return False
    return not (match.content is not None and not fnmatch.fnmatch(content_rel, match.content))


def _from_mapping(data: Any, source: Path, lines: dict[tuple, int]) -> Manifest:
    problems = _Problems(source, lines)
    base = source.parent
    if not isinstance(data, dict):
        raise ManifestError([f"{source}: expected a mapping with contents, styles and sizes"])
    checked = _Checked(data, problems)
    name = str(checked.get("name", None) or source.stem)
    output = checked.get("output", None)
    if isinstance(output, str) and "://" not in output:
        output = str((base / output).resolve())
    stamps: dict[str, Stamp] = {}
    max_images = checked.get(MAX_IMAGES_KEY, DEFAULT_MAX_IMAGES)
    weights = _weights(checked, base, problems, stamps, max_images)
    contents = _expand_contents(checked.entries("contents"), base, problems, stamps, max_images)
    styles = _expand_styles(checked.entries("styles"), base, problems, stamps, max_images)
    sizes = checked.entries("sizes")
    raw_overrides = data.get("overrides")
    overrides = [  # an override with a bad parameter still applies its good ones
        (j, Match.model_validate(entry.get("match") or {}), checked.params(("overrides", j, "params")))
        for j, entry in enumerate(raw_overrides if isinstance(raw_overrides, list) else [])
        if ("overrides", j) not in checked.bad and checked.ok("overrides", j, "match")
    ]
    items = _items(contents, styles, sizes, checked.params(("params",)), overrides, base, problems)
    clips, options = _expand_videos(checked.entries("videos"), base)
    if clips:
        frames = _items(clips, styles, sizes, checked.params(("params",)), overrides, base, problems)
        items += [dataclasses.replace(spec, video=options[spec.content]) for spec in frames]
    if problems.items:
        raise ManifestError(problems.in_order())
    return Manifest(
        name=name,
        source=source,
        output=output,
        layout=checked.get("layout", DEFAULT_LAYOUT),
        weights=weights,
        items=items,
        stamps=stamps,
    )


#: what an item's content entry is called in its ``where``, by the manifest key it is under
_KINDS = {"contents": "content", "videos": "video"}


def _items(
    contents: list[tuple[str, str, tuple]],
    styles: list[tuple[StyleSpec, tuple]],
    sizes: list[tuple[int, int]],
    defaults: dict[str, Any],
    overrides: list[tuple[int, Match, dict[str, Any]]],
    base: Path,
    problems: _Problems,
) -> list[ItemSpec]:
    """Every content × style × size, its config built once per (size, applied overrides);
    the parameters are checked even where nothing expands or an override matches nothing."""
    size_paths: dict[int, tuple] = {}
    for i, size in sizes:
        size_paths.setdefault(size, ("sizes", i))  # a size listed twice: its first entry
    items = []
    seen_configs: dict[tuple, SynthesisConfig | None] = {}
    for content, content_rel, cpath in contents:
        for style, spath in styles:
            for _, size in sizes:
                applied = [j for j, match, _ in overrides if _matches(match, content_rel, style.name, size)]
                key = (size, tuple(applied))
                if key not in seen_configs:
                    layers = [(("params",), defaults)]
                    layers += [
                        (("overrides", j, "params"), extra) for j, _, extra in overrides if j in applied
                    ]
                    seen_configs[key] = _config(size, layers, base, problems, size_paths[size])
                config = seen_configs[key]
                if config is None:
                    continue
                where = (
                    f"{problems.line_of(cpath)} ({_KINDS[cpath[0]]}) × {problems.line_of(spath)} (style) "
                    f"× size {size}"
                )
                items.append(ItemSpec(content, content_rel, style, size, config, where))
    size = next(iter(size_paths), SynthesisConfig.size)
    if not seen_configs:  # nothing expanded (contents, styles or sizes are wrong): still check params
        _config(size, [(("params",), defaults)], base, problems)
    used = {j for _, applied in seen_configs for j in applied}
    for j, _, extra in overrides:
        if j not in used:  # an override that matched nothing still gets its values checked
            _config(size, [(("params",), defaults), (("overrides", j, "params"), extra)], base, problems)
    return items


def _load_table(source: Path) -> Manifest:
    """CSV or Parquet: one row per item; columns content, style, size, optional
    style_weights and style_name (';'-separated for blends) and any engine parameter."""
    rows, columns, first_line = _read_table(source)
    problems = _Problems(source, {})
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
        label = f"line {i + first_line}" if source.suffix.lower() == ".csv" else f"row {i}"
        row_problems: list[tuple[str, str]] = []
        item = _table_item(row, source.parent, row_problems, f"{source}: {label}")
        problems.items += [redact(f"{source}: {label}: {column}: {text}") for column, text in row_problems]
        if item is not None:
            items.append(item)
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


def _read_table(source: Path) -> tuple[list[dict[str, Any]], list[str], int]:
    """The rows, the columns, and the line (CSV) or row (Parquet) number of the first row."""
    if source.suffix.lower() == ".csv":
        with source.open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            return list(reader), list(reader.fieldnames or []), 2  # the header is line 1
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(source)
    except Exception as exc:  # pyarrow raises several types
        raise ManifestError([f"{source}: not a readable Parquet file ({exc})"]) from None
    return table.to_pylist(), table.column_names, 1


def _table_item(
    row: dict[str, Any], base: Path, problems: list[tuple[str, str]], where: str
) -> ItemSpec | None:
    """One row's item, or None with its problems as (column, message)."""
    content = str(row.get("content") or "")
    if not content:
        problems.append(("content", "empty; give an image path"))
    style_paths = [p.strip() for p in str(row.get("style") or "").split(";") if p.strip()]
    if not style_paths:
        problems.append(("style", "empty; give an image path (';' between blended styles)"))
    _check_table_texts(content, style_paths, str(row.get("style_name") or ""), problems)
    size = _table_size(row.get("size"), problems)
    weights = _table_weights(row.get("style_weights"), len(style_paths), problems)
    cells = {
        column: value
        for column, value in row.items()
        if column in PARAM_FIELDS and column not in TABLE_COLUMNS and value not in (None, "")
    }
    try:
        params = given_params(Params.model_validate(cells))
    except ValidationError as exc:
        for error in exc.errors():
            column = str(path_of(error)[0])
            whole = cells.get(column, NOTHING) if len(path_of(error)) > 1 else NOTHING
            problems.append((column, message(error, Params, whole)))
    if problems:
        return None
    try:
        config = SynthesisConfig(size=size, **_resolve_init(params, base))
    except ConfigError as exc:
        problems += [(p.field or "parameters", p.message) for p in getattr(exc, "problems", [exc])]
        return None
    resolved = tuple(locate(p, base) for p in style_paths)
    style = StyleSpec(str(row.get("style_name") or _style_name(resolved)), resolved, weights)
    # outputs mirror the table's relative paths; paths leaving its folder and URIs keep their name
    relative = Path(content)
    content_rel = (
        relative.name
        if is_uri(content) or relative.is_absolute() or ".." in relative.parts
        else relative.as_posix()
    )
    return ItemSpec(locate(content, base), content_rel, style, size, config, where)


def _check_table_texts(
    content: str, style_paths: list[str], style_name: str, problems: list[tuple[str, str]]
) -> None:
    """A row's paths and style name, checked as a YAML manifest's are (``check_location``):
    credentials first, never echoed; then what no output path may hold."""
    checks = [("content", content, check_location)] if content else []
    checks += [("style", path, check_location) for path in style_paths]
    checks += [("style_name", style_name, check_holdable)] if style_name else []
    for column, text, check in checks:
        try:
            check(text)
        except ValueError as exc:
            problems.append((column, str(exc)))


def _table_size(value: Any, problems: list[tuple[str, str]]) -> int:
    try:
        number = float(value)
        size = int(number)
        if size <= 0 or size != number:
            raise ValueError
    except (TypeError, ValueError, OverflowError):
        problems.append(("size", f"expected a positive whole number, got {value!r}"))
        return 0
    return size


def _table_weights(value: Any, count: int, problems: list[tuple[str, str]]) -> tuple[float, ...]:
    """A blend's weights, ';'-separated (default: equal)."""
    if value in (None, ""):
        return (1.0,) * count
    try:
        weights = tuple(float(w) for w in str(value).split(";"))
    except ValueError:
        problems.append(("style_weights", f"expected numbers, got {value!r}"))
        return (1.0,) * count
    if len(weights) != count:
        problems.append(("style_weights", f"give {count} weights, one per style image"))
    elif weights and (any(not 0 <= w <= FLOAT32_MAX for w in weights) or sum(weights) <= 0):  # NaN too
        problems.append(("style_weights", "give finite, non-negative weights with a positive sum"))
    return weights


def manifest_from_dict(data: dict[str, Any], base: Path) -> Manifest:
    """A manifest built in code (as the scaling benchmark does); paths relative to ``base``."""
    return _from_mapping(data, base / "<generated manifest>", {})
