"""What a YAML or JSON manifest may say, as pydantic models: the one place its keys, types and
ranges are written, from which come both its checks and its JSON Schema (``nst schema
manifest``, checked in as ``manifests/manifest.schema.json`` for editors).

The engine parameters (``params``) are ``SynthesisConfig``'s own fields, with their types,
constraints and help, so the schema never drifts from the engine. What needs the file
system (folders and globs that must match images, a weights file that must exist) or
several parameters at once is checked by ``planning.manifest`` after these models.

The class and field docstrings below are the schema's descriptions: they are written for
the people who edit manifests.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Self

from pydantic import AfterValidator, ConfigDict, Field, Strict, create_model, field_validator, model_validator

from nst_engine.engine.config import NonNegative, Size, SynthesisConfig
from nst_engine.engine.images import MAX_SIDE
from nst_engine.planning.sources import DEFAULT_MAX_IMAGES
from nst_engine.storage.paths import check_holdable, safe_relative
from nst_engine.storage.uris import check_location, is_uri
from nst_engine.validation import Section, text_or

DEFAULT_LAYOUT = "{style}/{size}/{content}.png"
LAYOUT_FIELDS = ("style", "size", "content", "content_name", "id")
SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"

Text = Annotated[str, Field(min_length=1)]
#: a name may be written as a number (``name: 2024``); it is text all the same; it becomes
#: part of output paths ({style}) and rows, so it holds nothing an output path cannot
Name = Annotated[str, Field(coerce_numbers_to_str=True), AfterValidator(check_holdable)]


#: a path or URI (an image, a folder, a glob, an output root), checked by ``check_location``
Location = Annotated[str, AfterValidator(check_location)]
#: ... that must not be empty
Input = Annotated[Location, Field(min_length=1)]


def check_layout(layout: str) -> str:
    """A layout must name known fields, stay inside the output root and end in .png."""
    try:
        safe_relative(layout.format(style="s", size=1, content="c", content_name="c", id="i"))
    except KeyError as exc:
        raise ValueError(
            f"unknown field {exc}; use {', '.join('{' + f + '}' for f in LAYOUT_FIELDS)}"
        ) from None
    except (ValueError, IndexError, AttributeError) as exc:  # UnsafePathError is a ValueError
        raise ValueError(str(exc)) from None
    if not layout.endswith(".png"):
        raise ValueError("must end in .png (results are PNG files)")
    return layout


class ParamsSection(Section):
    """What a manifest's parameters are told apart by: their own words for unknown keys."""

    unknown: ClassVar[str] = "unknown parameter; choose from {keys}"
    moved: ClassVar[dict[str, str]] = {"size": "set sizes with the top-level 'sizes' list"}


#: ``SynthesisConfig``'s fields but the size, each with its type, constraints, default and help
Params = create_model(
    "Params",
    __base__=ParamsSection,
    __doc__="Engine parameters: the options of `nst stylize` of the same names (tv_weight is "
    "--tv-weight). The size is not one of them: it is the manifest's `sizes` list.",
    **{
        name: (info.annotation, info)
        for name, info in SynthesisConfig.__pydantic_fields__.items()
        if name != "size"
    },
)


def given_params(params: Section | None) -> dict[str, Any]:
    """The parameters a manifest sets, validated (defaults are the engine's business)."""
    return {name: getattr(params, name) for name in params.model_fields_set} if params else {}


class StyleImage(Section):
    """One image of a blended style."""

    path: Input = Field(description="Image file or URI, relative to the manifest.")
    weight: NonNegative = Field(1.0, description="Its share of the blend.")


ImageItem = text_or(StyleImage, "expected {path: FILE, weight: NUMBER}", Location)


class StyleEntry(Section):
    """A named style: one image, or several blended."""

    name: Name | None = Field(
        None, description="For the layout and the results (default: the images' names)."
    )
    image: Input | None = Field(None, description="One style image.")
    images: (
        Annotated[
            list[ImageItem],
            Field(min_length=1),
        ]
        | None
    ) = Field(None, description="Several style images, blended: paths or {path, weight}.")

    @model_validator(mode="after")
    def _has_images(self) -> Self:
        if self.images is None and self.image is None:
            raise ValueError("a style needs 'image: PATH' or 'images: [{path, weight}]'")
        if sum(weight for _, weight in self.parts()) <= 0:
            raise ValueError("style blend weights must have a positive sum")
        return self

    def parts(self) -> list[tuple[str, float]]:
        """(path as written, weight) of each image; ``images`` wins over ``image``."""
        if self.images is None:
            return [(str(self.image), 1.0)]
        return [(i, 1.0) if isinstance(i, str) else (i.path, i.weight) for i in self.images]


class Weights(Section):
    """The VGG-19 weights, one network for the whole manifest (``WeightsSpec``'s fields)."""

    source: Input = Field(
        "embedded", description="embedded, torchvision, random[:SEED], or a state-dict file (a local path)."
    )
    preprocessing: str | None = Field(None, description="For a file: torchvision (default) or caffe.")
    normalize: bool = Field(False, description="The paper's mean-activation normalization.")
    calibration: tuple[Input, ...] = Field(
        (), description="Images for the normalization: files, folders, globs or URIs (default: the samples)."
    )
    calibration_size: Annotated[int, Field(ge=1, le=MAX_SIDE)] = Field(
        256, description=f"Their size for the normalization (at most {MAX_SIDE:,}, the largest size)."
    )
    allow_download: bool = Field(False, description="Allow downloading the torchvision weights.")

    @field_validator("source")
    @classmethod
    def _local(cls, source: str) -> str:
        if is_uri(source):
            raise ValueError("a weights file must be a local path on every node, not a URI")
        return source


class VideoEntry(Section):
    """One clip, stylized as chains of frames (Ruder et al. 2016): a video file, or its frames
    as a folder of images or a pattern (frame_%04d.png, frame_*.png)."""

    path: Input = Field(description="Video file, frame folder or pattern, or URI, relative to the manifest.")
    rate: Annotated[str | int | float, Field(coerce_numbers_to_str=True)] | None = Field(
        None,
        description="Frames per second of a frame folder or pattern (24, 30000/1001); "
        "a video file has its own.",
    )
    cuts: list[Annotated[int, Strict(), Field(ge=1)]] | None = Field(
        None,
        description="Frames (0-based) that start a new shot; "
        "default: found from the optical flow's consistency.",
    )
    later_iterations: Annotated[int, Strict(), Field(ge=0)] | None = Field(
        None, description="Iterations of each frame after a shot's first (default: half of iterations)."
    )


StyleItem = text_or(StyleEntry, "expected a path or a mapping with 'images'", Location)
VideoItem = text_or(VideoEntry, "expected a path or {path, rate, cuts, later_iterations}", Location)
WeightsItem = text_or(Weights, "expected {source: embedded|torchvision|FILE, normalize: BOOL}", Location)


class Match(Section):
    """Which items an override applies to: all that match every key given."""

    style: Name | None = Field(None, description="A style's name.")
    size: Annotated[Size, Strict()] | None = Field(None, description="One of the sizes.")
    content: str | None = Field(
        None, description="A glob on the content's path relative to its folder or glob base."
    )


class Override(Section):
    """Parameters for the items that match; later overrides win."""

    match: Match = Field(default_factory=Match)
    params: Params | None = None  # type: ignore[valid-type]


class ManifestFile(Section):
    """An nst-engine manifest: contents x styles x sizes, with engine parameters, rendered by
    `nst render`. Paths are relative to the manifest's folder."""

    expected: ClassVar[dict[str, str]] = {
        "contents": "give a list of content images: files, folders, globs or URIs",
        "styles": "give a list of style images (a path, or {name, images: [{path, weight}]})",
        "sizes": "give a list of sizes in pixels (the longer side), e.g. [256, 512]",
        "output": "expected a folder path or URI",
        "layout": "expected a template such as '{style}/{size}/{content}.png'",
        "max_images_per_entry": f"expected a whole number >= 1 (default {DEFAULT_MAX_IMAGES:,})",
    }

    name: Name | None = Field(None, description="Recorded in every result row (default: the file name).")
    output: Location | None = Field(
        None, description="Output root: a folder or an s3://, gs://, file:// URI (--output overrides it)."
    )
    layout: Annotated[str, AfterValidator(check_layout)] = Field(
        DEFAULT_LAYOUT,
        description="Output names: {style} {size} {content} {content_name} {id}; ends in .png.",
    )
    contents: list[Input] = Field(
        default_factory=list, description="Content images: files, folders (recursive), globs, or URIs."
    )
    videos: list[VideoItem] = Field(
        default_factory=list,
        description="Video clips: a video file, a frame folder or pattern, "
        "or {path, rate, cuts, later_iterations}.",
    )
    styles: list[StyleItem] = Field(
        min_length=1,
        description="Style images: a path, folder or glob (one style per image), or a named entry.",
    )
    sizes: list[Annotated[Size, Strict()]] = Field(
        min_length=1, description="Longer sides in pixels; every item renders at each."
    )
    params: Params | None = Field(None, description="Engine parameters for every item.")  # type: ignore[valid-type]
    weights: WeightsItem | None = Field(None, description="The VGG-19 weights: a source, or a mapping.")
    overrides: list[Override] | None = Field(None, description="Parameters for matching items.")
    # no upper bound: a limit, only compared with a count, never stored; any value is usable
    max_images_per_entry: Annotated[int, Strict(), Field(ge=1)] = Field(
        DEFAULT_MAX_IMAGES, description="The most images one folder or glob entry may expand to."
    )

    # the schema says it too, for editors: one of the two lists at least
    model_config = ConfigDict(
        **Section.model_config,
        json_schema_extra={"anyOf": [{"required": ["contents"]}, {"required": ["videos"]}]},
    )

    @model_validator(mode="after")
    def _has_contents(self) -> Self:
        if not self.contents and not self.videos:
            raise ValueError("give 'contents' (images), 'videos' (clips), or both")
        return self


def manifest_schema() -> dict[str, Any]:
    """The JSON Schema of a YAML or JSON manifest."""
    return {"$schema": SCHEMA_DIALECT, **ManifestFile.model_json_schema()}
