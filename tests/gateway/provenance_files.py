"""Image files with provenance metadata, made at test time: generator text chunks, XMP source types,
EXIF tools and cameras, and C2PA manifests signed here with a certificate chain made here (no
test certificate is downloaded or stored: c2pa-python signs offline with any ES256 chain).
"""

from __future__ import annotations

import datetime
import io
import json
from functools import cache

import c2pa
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from PIL import Image, PngImagePlugin

from tests.gateway import images

IPTC = "http://cv.iptc.org/newscodes/digitalsourcetype/"
SD_PARAMETERS = (
    "a photo of a lighthouse at dusk, 35mm\nNegative prompt: blurry\n"
    "Steps: 30, Sampler: DPM++ 2M Karras, CFG scale: 7, Seed: 1234, Size: 512x512, Model: sd_xl_base_1.0"
)
COMFYUI_PROMPT = json.dumps(
    {
        "3": {"class_type": "KSampler", "inputs": {"seed": 5, "steps": 20}},
        "4": {"class_type": "CheckpointLoaderSimple"},
    }
)
SIGNER_ORGANIZATION = "aidetect test signer"


def base_image() -> Image.Image:
    return images.gradient(96, 64)


def png_with_text(**chunks: str) -> bytes:
    info = PngImagePlugin.PngInfo()
    for key, value in chunks.items():
        info.add_text(key, value)
    buffer = io.BytesIO()
    base_image().save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()


def xmp_packet(
    source_type: str | None = None, creator_tool: str | None = None, attributes: bool = False
) -> bytes:
    """An XMP packet as Adobe and the generators write it: properties as elements, or as attributes
    of rdf:Description (`attributes`)."""
    properties = {}
    if source_type is not None:
        properties["Iptc4xmpExt:DigitalSourceType"] = IPTC + source_type
    if creator_tool is not None:
        properties["xmp:CreatorTool"] = creator_tool
    if attributes:
        body = "<rdf:Description rdf:about=''" + "".join(f' {k}="{v}"' for k, v in properties.items()) + "/>"
    else:
        body = "<rdf:Description rdf:about=''>" + "".join(f"<{k}>{v}</{k}>" for k, v in properties.items())
        body += "</rdf:Description>"
    return (
        '<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>'
        '<x:xmpmeta xmlns:x="adobe:ns:meta/">'
        '<rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#" '
        'xmlns:Iptc4xmpExt="http://iptc.org/std/Iptc4xmpExt/2008-02-29/" xmlns:xmp="http://ns.adobe.com/xap/1.0/">'
        f"{body}</rdf:RDF></x:xmpmeta><?xpacket end='w'?>"
    ).encode()


def jpeg(xmp: bytes | None = None, exif: Image.Exif | None = None) -> bytes:
    buffer = io.BytesIO()
    options: dict[str, object] = {"quality": 90}
    if xmp is not None:
        options["xmp"] = xmp
    if exif is not None:
        options["exif"] = exif.tobytes()
    base_image().save(buffer, format="JPEG", **options)
    return buffer.getvalue()


def exif(
    software: str | None = None,
    make: str | None = None,
    model: str | None = None,
    user_comment: bytes | None = None,
) -> Image.Exif:
    tags = Image.Exif()
    for tag, value in ((0x0131, software), (0x010F, make), (0x0110, model)):
        if value is not None:
            tags[tag] = value
    if user_comment is not None:
        tags.get_ifd(0x8769)[0x9286] = user_comment
    return tags


def a1111_user_comment() -> bytes:
    """How Stable Diffusion web UIs store their parameters in JPEG/WebP (piexif's UNICODE comment)."""
    return b"UNICODE\x00" + SD_PARAMETERS.encode("utf-16-be")


# ---------------------------------------------------------------- C2PA


def _certificate(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: str,
    issuer_key: ec.EllipticCurvePrivateKey,
    ca: bool,
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)

    def name(common_name: str) -> x509.Name:
        return x509.Name(
            [
                x509.NameAttribute(NameOID.COMMON_NAME, common_name),
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, SIGNER_ORGANIZATION),
            ]
        )

    usage = dict.fromkeys(
        (
            "content_commitment",
            "key_encipherment",
            "data_encipherment",
            "key_agreement",
            "encipher_only",
            "decipher_only",
        ),
        False,
    )
    builder = (
        x509.CertificateBuilder()
        .subject_name(name(subject))
        .issuer_name(name(issuer))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), critical=False
        )
        .add_extension(
            x509.KeyUsage(digital_signature=not ca, key_cert_sign=ca, crl_sign=ca, **usage), critical=True
        )
    )
    if not ca:  # C2PA accepts signing certificates for e-mail protection (among others)
        builder = builder.add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]), critical=False
        )
    return builder.sign(issuer_key, hashes.SHA256())


@cache
def signing_credentials() -> tuple[bytes, bytes]:
    """(PEM chain: signer then root, PEM private key of the signer), made once per test session."""
    root_key, signer_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    root = _certificate("aidetect test root", root_key, "aidetect test root", root_key, ca=True)
    signer = _certificate("aidetect test signer", signer_key, "aidetect test root", root_key, ca=False)
    chain = signer.public_bytes(serialization.Encoding.PEM) + root.public_bytes(serialization.Encoding.PEM)
    key = signer_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return chain, key


def c2pa_signed(
    source: bytes, mime_type: str, source_type: str, generator: str = "aidetect-test-generator"
) -> bytes:
    """`source` with a C2PA manifest whose `c2pa.created` action declares `source_type`."""
    chain, key = signing_credentials()
    manifest = {
        "claim_generator_info": [{"name": generator, "version": "1.0"}],
        "title": "test image",
        "assertions": [
            {
                "label": "c2pa.actions",
                "data": {"actions": [{"action": "c2pa.created", "digitalSourceType": IPTC + source_type}]},
            }
        ],
    }
    signer = c2pa.Signer.from_info(c2pa.C2paSignerInfo(c2pa.C2paSigningAlg.ES256, chain, key, None))
    output = io.BytesIO()
    with c2pa.Builder(manifest) as builder:
        builder.sign(signer, mime_type, io.BytesIO(source), output)
    return output.getvalue()


def c2pa_jpeg(source_type: str = "trainedAlgorithmicMedia") -> bytes:
    return c2pa_signed(jpeg(), "image/jpeg", source_type)


def c2pa_png(source_type: str = "trainedAlgorithmicMedia") -> bytes:
    return c2pa_signed(png_with_text(), "image/png", source_type)


def tampered(signed_jpeg: bytes) -> bytes:
    """The signed JPEG with one byte of its last scan changed: the manifest's data hash no longer
    matches (the image still decodes)."""
    data = bytearray(signed_jpeg)
    data[-40] ^= 0x01
    return bytes(data)
