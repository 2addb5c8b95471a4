"""Provenance read from the upload's own bytes, and the verdict rule (gateway/provenance.py,
gateway/verdict.py), on files made here (tests/gateway/provenance_files.py)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image, PngImagePlugin

from common.model_card import read_model_card
from gateway.provenance import Finding, read_provenance
from gateway.verdict import NO_METADATA_NOTE, Band, BandSource, decide
from tests.gateway import images
from tests.gateway import provenance_files as files
from tests.gateway.conftest import FAKE_THRESHOLD, FAKE_VERSION, MakeClient


def findings_of(data: bytes) -> tuple[Finding, ...]:
    image = Image.open(io.BytesIO(data))
    image.load()
    return read_provenance(data, image)


def implications(data: bytes) -> list[tuple[str, str]]:
    return [(finding.kind, finding.implies) for finding in findings_of(data)]


# ---------------------------------------------------------------- what is read


def test_a_plain_image_has_no_findings() -> None:
    assert findings_of(images.encode(images.gradient(), "JPEG")) == ()
    assert findings_of(files.png_with_text()) == ()


def test_stable_diffusion_web_ui_parameters_in_png_declare_ai() -> None:
    (finding,) = findings_of(files.png_with_text(parameters=files.SD_PARAMETERS))
    assert (finding.kind, finding.implies) == ("generator_parameters", "ai")
    assert "Stable Diffusion web UI" in finding.finding


def test_comfyui_graph_declares_ai_but_a_plain_prompt_text_does_not() -> None:
    assert implications(files.png_with_text(prompt=files.COMFYUI_PROMPT)) == [("generator_parameters", "ai")]
    assert implications(files.png_with_text(prompt="a dog in the snow")) == []


def test_novelai_software_chunk_declares_ai() -> None:
    data = files.png_with_text(Software="NovelAI", Comment='{"steps": 28, "sampler": "k_euler"}')
    assert implications(data) == [("generator_parameters", "ai")]


def test_parameters_in_the_exif_user_comment_of_a_jpeg_declare_ai() -> None:
    data = files.jpeg(exif=files.exif(user_comment=files.a1111_user_comment()))
    assert implications(data) == [("generator_parameters", "ai")]


@pytest.mark.parametrize("attributes", [False, True], ids=["elements", "attributes"])
@pytest.mark.parametrize("source_type", ["trainedAlgorithmicMedia", "compositeWithTrainedAlgorithmicMedia"])
def test_xmp_digital_source_type_of_generative_ai_declares_ai(source_type: str, attributes: bool) -> None:
    (finding,) = findings_of(files.jpeg(xmp=files.xmp_packet(source_type, attributes=attributes)))
    assert (finding.kind, finding.implies) == ("digital_source_type", "ai")
    assert source_type in finding.finding


@pytest.mark.parametrize("image_format", ["TIFF", "WEBP"])
def test_xmp_and_exif_of_tiff_and_webp_are_read_too(image_format: str) -> None:
    packet = files.xmp_packet("trainedAlgorithmicMedia")
    options = {"tiffinfo": {700: packet}} if image_format == "TIFF" else {"xmp": packet}
    data = images.encode(files.base_image(), image_format, **options)
    assert implications(data) == [("digital_source_type", "ai")]


def test_xmp_capture_source_type_and_creator_tool() -> None:
    data = files.jpeg(xmp=files.xmp_packet("digitalCapture", creator_tool="Adobe Lightroom Classic 13.0"))
    assert implications(data) == [("digital_source_type", "camera"), ("software", "none")]


def test_exif_software_naming_a_generator_is_a_hint_and_a_camera_proves_nothing() -> None:
    assert implications(files.jpeg(exif=files.exif(software="Midjourney v6"))) == [("software", "hint_ai")]
    assert implications(files.jpeg(exif=files.exif(software="Adobe Photoshop 25.0"))) == [
        ("software", "none")
    ]
    findings = findings_of(files.jpeg(exif=files.exif(make="Canon", model="Canon EOS R5")))
    assert [(f.kind, f.implies) for f in findings] == [("camera", "camera")]
    assert "Canon EOS R5" in findings[0].finding and "proves nothing" in findings[0].finding


def test_c2pa_manifest_declaring_generative_ai_decides_with_its_signer_named() -> None:
    (finding,) = findings_of(files.c2pa_jpeg("trainedAlgorithmicMedia"))
    assert (finding.kind, finding.implies) == ("c2pa", "ai")
    assert "signature valid" in finding.finding and "not on a trust list" in finding.finding
    assert files.SIGNER_ORGANIZATION in finding.finding and "aidetect-test-generator" in finding.finding


def test_c2pa_in_png_is_read_too() -> None:
    assert implications(files.c2pa_png("compositeWithTrainedAlgorithmicMedia")) == [("c2pa", "ai")]


def test_c2pa_manifest_declaring_a_capture() -> None:
    assert implications(files.c2pa_jpeg("digitalCapture")) == [("c2pa", "camera")]


def test_tampered_c2pa_file_is_only_a_hint_and_says_why() -> None:
    (finding,) = findings_of(files.tampered(files.c2pa_jpeg()))
    assert (finding.kind, finding.implies) == ("c2pa", "hint_ai")
    assert "does not validate" in finding.finding and "changed after signing" in finding.finding


@pytest.mark.parametrize(
    "packet",
    [
        b'<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;">]>'
        b"<x:xmpmeta xmlns:x='adobe:ns:meta/'><DigitalSourceType>&lol2;</DigitalSourceType></x:xmpmeta>",
        b"<x:xmpmeta><DigitalSourceType><unclosed>",
        b'<!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]><DigitalSourceType>&e;</DigitalSourceType>',
        b"<a>" * 9000 + b"<DigitalSourceType>" + b"</a>" * 9000,
    ],
    ids=["billion-laughs", "malformed", "external-entity", "deep-nesting"],
)
def test_hostile_xmp_is_a_metadata_error_not_a_failure(packet: bytes) -> None:
    (finding,) = findings_of(files.jpeg(xmp=packet))
    assert (finding.kind, finding.implies) == ("metadata_error", "none")
    assert "XMP" in finding.finding


def test_png_xmp_that_keeps_the_jpeg_namespace_prefix_is_read() -> None:
    """As real_13.png of the shared uploads: the iTXt packet starts with "http://ns.adobe.com/xap/1.0/\\0"."""
    info = PngImagePlugin.PngInfo()
    info.add_itxt(
        "XML:com.adobe.xmp",
        "http://ns.adobe.com/xap/1.0/\x00" + files.xmp_packet(creator_tool="GIMP 2.10").decode(),
    )
    buffer = io.BytesIO()
    files.base_image().save(buffer, format="PNG", pnginfo=info)
    assert implications(buffer.getvalue()) == [("software", "none")]


def test_xmp_is_parsed_only_when_it_holds_a_property_read_here() -> None:
    assert findings_of(files.jpeg(xmp=b"<x:xmpmeta><unclosed>")) == ()


def test_junk_with_the_c2pa_label_is_ignored_or_reported_never_raised() -> None:
    plain = files.jpeg()
    junk = plain[:2] + b"\xff\xeb\x00\x22JP\x00\x01" + b"c2pa" * 7 + plain[2:]
    assert all(finding.implies == "none" for finding in findings_of(junk))
    signed = bytearray(files.c2pa_jpeg())
    segment = signed.index(b"\xff\xeb")  # the APP11 segment holding the manifest store
    signed[segment + 60 : segment + 400] = bytes(340)  # its JUMBF boxes zeroed: unreadable
    assert all(finding.kind in ("c2pa", "metadata_error") for finding in findings_of(bytes(signed)))


def test_long_values_are_cut_and_cleaned() -> None:
    (finding,) = findings_of(files.jpeg(exif=files.exif(software="Tool\x00\x07" + "x" * 5000)))
    assert len(finding.finding) < 400 and "\x00" not in finding.finding


# ---------------------------------------------------------------- the verdict rule

AI_FINDING = Finding("digital_source_type", "declares trainedAlgorithmicMedia", "ai")
HINT = Finding("software", "names Midjourney", "hint_ai")
BAND = Band(real_below=0.3, ai_from=0.7, target_error=0.1)


def test_a_finding_implying_ai_decides_whatever_the_score() -> None:
    verdict, reason = decide([HINT, AI_FINDING], 0.01, 0.5, BAND)
    assert verdict == "ai" and "digital source type" in reason and "0.010" in reason


@pytest.mark.parametrize(
    ("score", "expected"), [(0.1, "real"), (0.3, "inconclusive"), (0.69, "inconclusive"), (0.7, "ai")]
)
def test_the_band_decides_without_such_a_finding(score: float, expected: str) -> None:
    verdict, reason = decide([HINT], score, 0.5, BAND)
    assert verdict == expected
    assert reason.endswith(NO_METADATA_NOTE)


def test_without_a_band_the_threshold_decides_two_ways() -> None:
    assert decide([], 0.49, 0.5, None)[0] == "real"
    verdict, reason = decide([], 0.5, 0.5, None)
    assert verdict == "ai" and "no inconclusive band" in reason


def test_band_is_read_from_the_model_card_and_bad_entries_are_ignored(tmp_path) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "2").mkdir()
    (tmp_path / "2" / "model_card.json").write_text(
        '{"verdict_band": {"real_below": 0.2, "ai_from": 0.8, "target_error": 0.05}}'
    )
    (tmp_path / "3").mkdir()
    (tmp_path / "3" / "model_card.json").write_text('{"verdict_band": {"real_below": 0.9, "ai_from": 0.1}}')
    source = BandSource(tmp_path)
    assert source.band(2) == Band(0.2, 0.8, 0.05)
    assert source.band(3) is None and source.band(4) is None
    assert BandSource(None).band(2) is None
    assert read_model_card(tmp_path / "2") is not None


# ---------------------------------------------------------------- through the API


def test_predict_and_batch_answer_verdict_reason_and_provenance(make_client: MakeClient, tmp_path) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / str(FAKE_VERSION)).mkdir()
    (tmp_path / str(FAKE_VERSION) / "model_card.json").write_text(
        '{"verdict_band": {"real_below": 0.3, "ai_from": 0.7, "target_error": 0.1}}'
    )
    client, _ = make_client(model_card_directory=tmp_path)
    declared = files.png_with_text(parameters=files.SD_PARAMETERS)
    body = post(client, declared).json()
    assert body["verdict"] == "ai" and body["label"] in ("ai", "real")
    assert body["provenance"] == [finding.to_dict() for finding in findings_of(declared)]
    assert "decided by the file's own metadata" in body["verdict_reason"]

    grey = images.solid(128)  # the fake model scores mean brightness: 0.502, inside the band
    body = post(client, grey).json()
    assert (body["verdict"], body["provenance"]) == ("inconclusive", [])
    assert body["label"] == ("ai" if body["score"] >= FAKE_THRESHOLD else "real")

    response = client.post(
        "/predict/batch",
        files=[("files", ("a.png", declared, "image/png")), ("files", ("b.png", grey, "image/png"))],
    )
    assert [item["verdict"] for item in response.json()["results"]] == ["ai", "inconclusive"]


def test_without_a_model_card_the_verdict_is_two_way(client_and_fake) -> None:  # type: ignore[no-untyped-def]
    client, _ = client_and_fake
    body = post(client, images.solid(230)).json()
    assert body["verdict"] == body["label"] == "ai" and "no inconclusive band" in body["verdict_reason"]


def test_provenance_reading_can_be_switched_off(make_client: MakeClient) -> None:
    client, _ = make_client(read_provenance=False)
    body = post(client, files.png_with_text(parameters=files.SD_PARAMETERS)).json()
    assert body["provenance"] == [] and body["verdict"] == body["label"]
    assert "does not read the file's metadata" in body["verdict_reason"]


def test_openapi_documents_the_new_fields(client_and_fake) -> None:  # type: ignore[no-untyped-def]
    client, _ = client_and_fake
    schemas = client.get("/openapi.json").json()["components"]["schemas"]
    for model in ("PredictionResponse", "BatchItem"):
        properties = schemas[model]["properties"]
        assert {"verdict", "verdict_reason", "provenance"} <= set(properties)
        assert "inconclusive" in str(properties["verdict"])
    assert set(schemas["ProvenanceFinding"]["properties"]) == {"kind", "finding", "implies"}


def post(client: TestClient, data: bytes):  # type: ignore[no-untyped-def]
    return client.post("/predict", files={"file": ("x.png", data, "image/png")})


# ---------------------------------------------------------------- where the model looked


def test_explain_answers_a_heatmap_and_its_overlay_on_request_only(client_and_fake) -> None:  # type: ignore[no-untyped-def]
    import base64

    client, _ = client_and_fake
    half = np.zeros((256, 256, 3), np.uint8)
    half[:, 128:] = 255  # bright right half: the fake model's heatmap is positive there
    data = images.encode(Image.fromarray(half), "PNG")
    assert post(client, data).json()["explanation"] is None  # never on the default path
    body = client.post("/predict?explain=true", files={"file": ("x.png", data, "image/png")}).json()
    heatmap = np.asarray(body["explanation"]["heatmap"])
    assert heatmap.shape == (8, 8) and heatmap[:, 4:].min() > 0 > heatmap[:, :4].max()
    assert body["explanation"]["overlay"].startswith("data:image/jpeg;base64,")
    overlay = Image.open(io.BytesIO(base64.b64decode(body["explanation"]["overlay"].split(",", 1)[1])))
    assert overlay.size == (256, 256)
    red, _, blue = np.asarray(overlay, dtype=np.float64).transpose(2, 0, 1)
    assert red[:, 200:].mean() < 255 and blue[:, :50].mean() > 0  # tinted: red on the right, blue on the left
    assert "blur occlusion" in body["explanation"]["method"]
    items = client.post(
        "/predict/batch?explain=true",
        files=[("files", ("a.png", data, "image/png")), ("files", ("b.png", images.solid(10), "image/png"))],
    ).json()["results"]
    assert [len(item["explanation"]["heatmap"]) for item in items] == [8, 8]


def test_explain_for_a_model_without_the_signature_is_a_clear_422(client_and_fake) -> None:  # type: ignore[no-untyped-def]
    client, fake = client_and_fake
    fake.explains = False
    response = client.post("/predict?explain=true", files={"file": ("x.png", images.solid(10), "image/png")})
    assert response.status_code == 422
    assert "without the explain signature" in response.json()["error"]
