"""What an upload's own bytes say about where it came from, beside the pixel score (issue 16).

Read from the original bytes and from the metadata Pillow already parsed while decoding (in the
decode thread, no second parse of the image):

- a C2PA manifest (`c2pa-python`, the Content Authenticity Initiative's library): present, its
  signature valid or not, the claim generator, and whether its actions declare generative AI
  (IPTC digital source type `trainedAlgorithmicMedia` / `compositeWithTrainedAlgorithmicMedia`);
- the XMP packet (`defusedxml`: no entities, no external references): IPTC `DigitalSourceType`,
  `xmp:CreatorTool`;
- EXIF `Software`, `Make`/`Model` and the `UserComment` where Stable Diffusion web UIs write their
  parameters in JPEG and WebP files;
- generator parameters in PNG text chunks (Stable Diffusion web UIs' `parameters`, ComfyUI's
  `prompt`/`workflow`, InvokeAI, Fooocus, NovelAI).

Each finding says what it implies (`IMPLICATIONS`); gateway/verdict.py combines them with the
pixel score by the rule written in docs/provenance.md. Nothing here can fail a request: metadata
that is malformed, oversized or hostile becomes a `metadata_error` finding. Bounds: Pillow's own
limits on text chunks (1 MiB each, 64 MiB in all) and JPEG segments (64 KiB), XMP parsed only up
to MAX_XMP_BYTES, C2PA read only when the bytes hold the `c2pa` label, every text cut to
MAX_TEXT_CHARACTERS, at most MAX_FINDINGS findings.
"""

from __future__ import annotations

import io
import json
import re
import warnings
import xml.sax.handler
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cache
from typing import Any, Literal

import c2pa
import defusedxml.sax
from PIL import Image

Kind = Literal["c2pa", "digital_source_type", "generator_parameters", "software", "camera", "metadata_error"]
Implication = Literal["ai", "hint_ai", "camera", "none"]
IMPLICATIONS: dict[str, str] = {
    "ai": "declares generation by an AI model: decides the verdict 'ai'",
    "hint_ai": "points to an AI generator without proving it: shown, does not decide",
    "camera": "claims a camera capture: shown, does not decide (metadata is copied and edited freely)",
    "none": "says nothing about how the image was made",
}

# IPTC NewsCodes digital source types (https://cv.iptc.org/newscodes/digitalsourcetype/).
AI_SOURCE_TYPES = frozenset({"trainedAlgorithmicMedia", "compositeWithTrainedAlgorithmicMedia"})
CAPTURE_SOURCE_TYPES = frozenset({"digitalCapture", "computationalCapture", "negativeFilm", "positiveFilm"})
# Names of image generators and their front ends, as they appear in Software / CreatorTool /
# claim generator fields (lower case, matched as words).
GENERATOR_NAMES = (
    "midjourney", "dall-e", "dall·e", "openai", "chatgpt", "stable diffusion", "stability ai",
    "novelai", "comfyui", "automatic1111", "invokeai", "fooocus", "imagen", "gemini", "firefly",
    "leonardo.ai", "ideogram", "flux", "nano banana", "bing image creator", "dreamstudio",
)  # fmt: skip
# PNG text keys that generator front ends write, and who writes them.
GENERATOR_TEXT_KEYS = {
    "parameters": "a Stable Diffusion web UI (AUTOMATIC1111, Forge, SD.Next)",
    "prompt": "ComfyUI",
    "workflow": "ComfyUI",
    "invokeai_metadata": "InvokeAI",
    "sd-metadata": "InvokeAI",
    "dream": "InvokeAI",
    "fooocus_scheme": "Fooocus",
}
# The parameter line of Stable Diffusion web UIs (PNG `parameters`, EXIF UserComment).
SD_PARAMETERS = re.compile(r"\bSteps: \d+, Sampler: ")

C2PA_MIME_TYPES = {
    "JPEG": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp", "GIF": "image/gif", "TIFF": "image/tiff",
}  # fmt: skip
C2PA_INTEGRITY_OK = frozenset({"signingCredential.untrusted", "signingCredential.ocsp.unknown"})
MAX_XMP_BYTES = 256 * 1024  # a SAX pass costs about 35 ms per 256 KiB of the worst content
MAX_XMP_VALUES = 4  # per property
MAX_XMP_DEPTH = 64  # real packets nest about 6 deep; deeper only costs time
XMP_PROPERTIES = frozenset({"DigitalSourceType", "CreatorTool"})
MAX_TEXT_CHARACTERS = 160
MAX_FINDINGS = 12

EXIF_SOFTWARE, EXIF_MAKE, EXIF_MODEL, EXIF_IFD, EXIF_USER_COMMENT = 0x0131, 0x010F, 0x0110, 0x8769, 0x9286
TIFF_XMP = 700


@dataclass(frozen=True)
class Finding:
    kind: Kind
    finding: str  # in plain words
    implies: Implication

    def to_dict(self) -> dict[str, str]:
        return {"kind": self.kind, "finding": self.finding, "implies": self.implies}


def read_provenance(data: bytes, image: Image.Image) -> tuple[Finding, ...]:
    """Every finding in `data`, whose metadata Pillow has parsed into `image` (opened and loaded)."""
    findings: list[Finding] = []
    for kind, reader in READERS:
        try:
            with warnings.catch_warnings():  # Pillow warns about corrupt EXIF: a finding, not a log line
                warnings.simplefilter("ignore")
                findings.extend(reader(data, image))
        except Exception as error:  # noqa: BLE001 (hostile metadata must never fail the request)
            findings.append(
                Finding(
                    "metadata_error",
                    f"the {kind} metadata could not be read ({type(error).__name__}) and was ignored",
                    "none",
                )
            )
    unique = list(dict.fromkeys(findings))
    return tuple(unique[:MAX_FINDINGS])


def _short(text: object) -> str:
    """One line of at most MAX_TEXT_CHARACTERS, without control characters."""
    cleaned = "".join(character if character.isprintable() else " " for character in str(text))
    cleaned = " ".join(cleaned.split())
    return cleaned if len(cleaned) <= MAX_TEXT_CHARACTERS else cleaned[: MAX_TEXT_CHARACTERS - 1] + "…"


def _source_type_code(value: str) -> str:
    """`trainedAlgorithmicMedia` from the full IPTC URI (or from the bare code)."""
    return value.strip().rstrip("/").rsplit("/", 1)[-1]


def named_generator(text: str) -> str | None:
    lowered = text.lower()
    for name in GENERATOR_NAMES:
        if re.search(rf"(?<![\w-]){re.escape(name)}(?![\w-])", lowered):
            return name
    return None


# ---------------------------------------------------------------- C2PA


@cache
def _c2pa_context() -> c2pa.Context:
    # No network: no remote manifests, no OCSP (the gateway may sit where nothing is reachable).
    return c2pa.Context(
        c2pa.Settings.from_dict({"verify": {"remote_manifest_fetch": False, "ocsp_fetch": False}})
    )


def _c2pa(data: bytes, image: Image.Image) -> Iterator[Finding]:
    mime_type = C2PA_MIME_TYPES.get(image.format or "")
    if mime_type is None or b"c2pa" not in data:  # every manifest store carries the label
        return
    try:
        with c2pa.Reader(mime_type, io.BytesIO(data), None, _c2pa_context()) as reader:
            manifest = reader.get_active_manifest() or {}
            state = reader.get_validation_state() or "Invalid"
            results = reader.get_validation_results() or {}
    except c2pa.C2paError as error:
        if "ManifestNotFound" in str(error):
            return
        yield Finding("c2pa", f"a C2PA manifest is present but could not be read ({_short(error)})", "none")
        return
    source_types = [
        _source_type_code(str(action.get("digitalSourceType", "")))
        for assertion in manifest.get("assertions", [])
        if str(assertion.get("label", "")).startswith("c2pa.actions")
        for action in (assertion.get("data") or {}).get("actions", [])
        if action.get("digitalSourceType")
    ]
    generator = _claim_generator(manifest)
    signer = _short((manifest.get("signature_info") or {}).get("issuer") or "an unknown signer")
    failures = [
        str(entry.get("code"))
        for entry in (results.get("activeManifest") or {}).get("failure", [])
        if entry.get("code") not in C2PA_INTEGRITY_OK
    ]
    ai_types = [code for code in source_types if code in AI_SOURCE_TYPES]
    if state == "Invalid" or failures:
        changed = any("mismatch" in code or code.startswith("assertion.") for code in failures)
        why = (
            "the file changed after signing, so its claims do not describe these pixels"
            if changed
            else "its signature or signing credential did not validate, so nothing vouches for its claims"
        )
        yield Finding(
            "c2pa",
            f"a C2PA manifest (claim generator {generator!r}) is present but does not validate "
            f"({_short(', '.join(failures) or state)}): {why}"
            + (f"; it declared {ai_types[0]}" if ai_types else ""),
            "hint_ai" if ai_types else "none",
        )
        return
    trust = "signer on the configured trust list" if state == "Trusted" else "signer not on a trust list"
    signed = f"a C2PA manifest signed by {signer!r} (signature valid, {trust}; claim generator {generator!r})"
    if ai_types:
        yield Finding(
            "c2pa", f"{signed} declares the image {ai_types[0]}: made by a generative AI model", "ai"
        )
    elif any(code in CAPTURE_SOURCE_TYPES for code in source_types):
        yield Finding("c2pa", f"{signed} declares a capture ({source_types[0]})", "camera")
    else:
        yield Finding(
            "c2pa",
            f"{signed} declares no generative AI"
            + (f" (source type {', '.join(source_types)})" if source_types else ""),
            "hint_ai" if named_generator(generator) else "none",
        )


def _claim_generator(manifest: dict[str, Any]) -> str:
    info = manifest.get("claim_generator_info") or []
    if info and isinstance(info[0], dict) and info[0].get("name"):
        return _short(f"{info[0]['name']} {info[0].get('version', '')}".strip())
    return _short(manifest.get("claim_generator") or "unknown")


# ---------------------------------------------------------------- XMP


def _xmp_packet(image: Image.Image) -> bytes | None:
    packet = image.info.get("xmp")
    if packet is None and image.format == "TIFF":
        packet = image.getexif().get(TIFF_XMP)
    if packet is None:
        return None
    packet = packet.encode("utf-8") if isinstance(packet, str) else bytes(packet)
    # Some writers keep the JPEG segment's namespace prefix ("http://ns.adobe.com/xap/1.0/\0") in
    # PNG and WebP files too: the packet starts at its first tag.
    start = packet.find(b"<")
    return packet[start:] if start > 0 else packet


class _XmpProperties(xml.sax.handler.ContentHandler):
    """Collects the values of some XMP properties, streaming (no tree: deep nesting costs nothing):
    element text (rdf:li items included), rdf:resource, or attributes of rdf:Description."""

    def __init__(self, names: frozenset[str]) -> None:
        super().__init__()
        self.names = names
        self.values: dict[str, list[str]] = {name: [] for name in names}
        self._inside: list[tuple[str, list[str]]] = []  # (property, text parts) being read
        self._depth = 0

    def startElementNS(self, name: tuple[str | None, str], qname: str | None, attrs: Any) -> None:  # noqa: N802
        self._depth += 1
        if self._depth > MAX_XMP_DEPTH:
            raise ValueError(f"XMP nested deeper than {MAX_XMP_DEPTH} elements")
        for (_, attribute), value in attrs.items():
            if attribute in self.names and len(self.values[attribute]) < MAX_XMP_VALUES:
                self.values[attribute].append(value)
            elif attribute == "resource" and self._inside:
                self._inside[-1][1].append(value)
        if name[1] in self.names:
            self._inside.append((name[1], []))

    def characters(self, content: str) -> None:
        if self._inside:
            self._inside[-1][1].append(content)

    def endElementNS(self, name: tuple[str | None, str], qname: str | None) -> None:  # noqa: N802
        self._depth -= 1
        if self._inside and name[1] == self._inside[-1][0]:
            prop, parts = self._inside.pop()
            if "".join(parts).strip() and len(self.values[prop]) < MAX_XMP_VALUES:
                self.values[prop].append("".join(parts).strip())


def _xmp_values(packet: bytes, names: frozenset[str]) -> dict[str, list[str]]:
    handler = _XmpProperties(names)
    parser = defusedxml.sax.make_parser()
    parser.setFeature(xml.sax.handler.feature_namespaces, True)
    parser.setContentHandler(handler)
    parser.feed(packet.strip(b"\x00 \r\n\t"))
    parser.close()
    return handler.values


def _xmp(data: bytes, image: Image.Image) -> Iterator[Finding]:
    packet = _xmp_packet(image)
    if packet is None:
        return
    if len(packet) > MAX_XMP_BYTES:
        yield Finding(
            "metadata_error", f"the XMP packet is over {MAX_XMP_BYTES:,} bytes and was not read", "none"
        )
        return
    if b"DigitalSourceType" not in packet and b"CreatorTool" not in packet:
        return  # the only properties read here (the common case costs a byte search)
    values = _xmp_values(packet, XMP_PROPERTIES)
    for value in values["DigitalSourceType"]:
        code = _source_type_code(value)
        if code in AI_SOURCE_TYPES:
            yield Finding(
                "digital_source_type",
                f"the file's XMP declares the IPTC digital source type {code}: made by a generative "
                "AI model (unsigned metadata, as generators write it)",
                "ai",
            )
        else:
            implies: Implication = "camera" if code in CAPTURE_SOURCE_TYPES else "none"
            yield Finding(
                "digital_source_type", f"the file's XMP declares the source type {_short(code)}", implies
            )
    for tool in values["CreatorTool"]:
        yield _software_finding("XMP CreatorTool", tool)


# ---------------------------------------------------------------- EXIF


def _software_finding(field: str, value: str) -> Finding:
    name = named_generator(value)
    if name is not None:
        return Finding(
            "software",
            f"{field} names {_short(value)!r}, an image generator ({name}): unsigned, a hint only",
            "hint_ai",
        )
    return Finding(
        "software",
        f"{field} {_short(value)!r}: written or edited with this tool (says nothing about how it was made)",
        "none",
    )


def _user_comment(raw: object) -> str:
    """EXIF UserComment: an 8-byte character code, then the text."""
    if isinstance(raw, str):
        return raw
    if not isinstance(raw, bytes):
        return ""
    code, body = raw[:8], raw[8:]
    if code.startswith(b"UNICODE"):
        for encoding in ("utf-16-be", "utf-16-le"):
            text = body.decode(encoding, errors="replace")
            if SD_PARAMETERS.search(text):
                return text
        return body.decode("utf-16-be", errors="replace")
    return body.decode("utf-8", errors="replace")


def _exif(data: bytes, image: Image.Image) -> Iterator[Finding]:
    exif = image.getexif()
    software = exif.get(EXIF_SOFTWARE)
    if isinstance(software, str) and software.strip():
        yield _software_finding("EXIF Software", software)
    make, model = exif.get(EXIF_MAKE), exif.get(EXIF_MODEL)
    camera = " ".join(str(part).strip() for part in (make, model) if isinstance(part, str) and part.strip())
    if camera:
        yield Finding(
            "camera",
            f"EXIF names a camera: {_short(camera)} (unsigned and easily copied: proves nothing alone)",
            "camera",
        )
    comment = _user_comment(exif.get_ifd(EXIF_IFD).get(EXIF_USER_COMMENT)) if EXIF_IFD in exif else ""
    if SD_PARAMETERS.search(comment):
        yield _parameters_finding(
            "the EXIF UserComment", "a Stable Diffusion web UI (AUTOMATIC1111, Forge, SD.Next)"
        )


# ---------------------------------------------------------------- text chunks


def _parameters_finding(where: str, writer: str) -> Finding:
    return Finding(
        "generator_parameters",
        f"{where} holds the generation parameters that {writer} writes (prompt, steps, sampler, "
        "seed): the image was made by a diffusion model",
        "ai",
    )


def _text_chunks(data: bytes, image: Image.Image) -> Iterator[Finding]:
    if image.format != "PNG":
        return
    texts = {str(key).lower(): value for key, value in image.info.items() if isinstance(value, str)}
    for key, writer in GENERATOR_TEXT_KEYS.items():
        value = texts.get(key)
        if value is None:
            continue
        if key in ("prompt", "workflow") and not _is_comfyui_graph(value):
            continue  # a plain "prompt" text is not ComfyUI's graph
        yield _parameters_finding(f"the PNG text chunk {key!r}", writer)
        break
    software = texts.get("software", "")
    if software.strip().lower().startswith("novelai"):
        yield _parameters_finding("the PNG text chunks (Software: NovelAI)", "NovelAI")
        return
    if software.strip():
        yield _software_finding("PNG Software", software)
    comment = texts.get("comment", "")
    if comment.startswith("{") and '"steps"' in comment and '"sampler"' in comment:
        try:
            json.loads(comment)
        except ValueError:
            return
        yield _parameters_finding("the PNG text chunk 'Comment'", "an image generator")


def _is_comfyui_graph(text: str) -> bool:
    """ComfyUI's API prompt ({node id: {"class_type": ...}}) or its UI workflow ({"nodes": [...]})."""
    try:
        graph = json.loads(text)
    except (ValueError, RecursionError):
        return False
    if not isinstance(graph, dict):
        return False
    return isinstance(graph.get("nodes"), list) or any(
        isinstance(node, dict) and "class_type" in node for node in graph.values()
    )


READERS: tuple[tuple[str, Callable[[bytes, Image.Image], Iterator[Finding]]], ...] = (
    ("C2PA", _c2pa),
    ("XMP", _xmp),
    ("EXIF", _exif),
    ("PNG text", _text_chunks),
)
