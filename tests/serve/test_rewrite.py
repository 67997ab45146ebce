"""Finding and mapping a model named in a multipart/form-data body (audio uploads)."""

from __future__ import annotations

import httpx2
from hypothesis import given
from hypothesis import strategies as st

from proxy.serve.rewrite import multipart_model


def form(fields: dict[str, str], files: dict[str, bytes]) -> tuple[str, bytes]:
    # httpx2 builds the body the official SDK sends.
    req = httpx2.Request(
        "POST", "http://x/v1/audio/transcriptions", data=fields,
        files={k: (f"{k}.wav", v, "audio/wav") for k, v in files.items()},
    )  # fmt: skip
    return req.headers["content-type"], req.read()


def test_the_model_field_is_found_after_a_file_part_that_mentions_it() -> None:
    audio = b"RIFF" + b'\r\nContent-Disposition: form-data; name="model"\r\n\r\nfake' * 50
    ctype, body = form({"model": "whisper-1", "language": "en"}, {"file": audio})
    found = multipart_model(ctype, body)
    assert found is not None
    model, (start, end) = found
    assert model == "whisper-1" and body[start:end] == b"whisper-1"


def test_a_filename_called_model_is_not_the_field() -> None:
    body = (
        b'--b\r\nContent-Disposition: form-data; name="file"; filename="model"\r\n\r\n'
        b"data\r\n--b\r\nContent-Disposition: form-data; name=model\r\n\r\nw-1\r\n--b--\r\n"
    )
    at = body.index(b"w-1")
    assert multipart_model('multipart/form-data; boundary="b"', body) == ("w-1", (at, at + 3))


def test_no_model_or_a_malformed_body_is_none() -> None:
    ctype, body = form({"language": "en"}, {"file": b"x"})
    assert multipart_model(ctype, body) is None
    assert multipart_model("multipart/form-data", body) is None  # no boundary
    assert multipart_model(ctype, body[:40]) is None  # cut off in the headers
    cut = body[: body.index(b"en") + 2]
    assert multipart_model(ctype, cut) is None


@given(
    st.dictionaries(
        st.sampled_from(["model", "language", "prompt", "stream"]), st.text(max_size=20)
    ),
    st.binary(max_size=200),
)
def test_whatever_the_fields_only_the_model_value_is_found(
    fields: dict[str, str], audio: bytes
) -> None:
    fields = {k: v for k, v in fields.items() if "\r" not in v}  # the client normalises newlines
    ctype, body = form(fields, {"file": audio})
    found = multipart_model(ctype, body)
    if "model" not in fields:
        assert found is None
    else:
        assert found is not None
        assert found[0] == fields["model"]
        start, end = found[1]
        mapped = body[:start] + b"prov/x" + body[end:]
        assert multipart_model(ctype, mapped) == ("prov/x", (start, start + 6))


@given(st.binary(max_size=300), st.sampled_from(["b", '"b"', "b; x=1", "", "=="]))
def test_any_bytes_give_a_field_or_none_never_an_error(body: bytes, boundary: str) -> None:
    found = multipart_model(f"multipart/form-data; boundary={boundary}", b"--b\r\n" + body)
    if found is not None:
        start, end = found[1]
        assert 0 <= start <= end and (b"--b\r\n" + body)[start:end].decode() == found[0]
