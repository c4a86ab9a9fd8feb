"""Targets pick the legal menu, the runtime's ties and quantizer, and refuse what the runtime
cannot serve before any measurement."""
import pytest
from pydantic import ValidationError

from search.spec import SearchSpec, specs_from_request
from search.targets import TARGETS, get_target
from search.validate import validate


def spec(**kw) -> SearchSpec:
    return SearchSpec(**{"model": "builtin:smollm2-135m", "budgets": {"avg_bits": 4.5}, **kw})


@pytest.mark.parametrize("name", list(TARGETS))
def test_each_target_menu_is_legal_for_it_and_validates(name):
    s = spec(target=name)
    formats = validate(s).parts.formats
    assert [f.label for f in formats] == [f.label for f in get_target(name).menu_formats()]
    get_target(name).check(formats)


def test_llamacpp_menu_is_ggml_types_and_ties_nothing():
    s = spec(target="llamacpp")
    assert {f.runtime for f in s.menu()} >= {"q2_K", "q3_K", "q4_K", "q5_K", "q6_K", "q8_0", "q4_0"}
    assert s.ties == []


def test_vllm_and_modelopt_tie_the_projections_they_fuse():
    for name in ("vllm", "modelopt"):
        assert {"qkv", "gate_up", "experts"} <= set(spec(target=name).ties)
    assert set(spec(target="vllm", ties=["qkv"]).ties) == {"qkv", "gate_up", "experts"}


@pytest.mark.parametrize("kw,words", [
    ({"target": "llamacpp", "bits": [4]}, "cannot serve w4g32a: llama.cpp stores ggml types"),
    ({"target": "vllm", "format_names": ["q4_K"]}, "cannot serve q4_K"),
    ({"target": "vllm", "bits": [3], "group_size": 128}, "4/8-bit integers, not 3-bit"),
    ({"target": "modelopt", "format_names": ["w4g64s"]}, "INT4 in groups of 128"),
    ({"target": "modelopt", "format_names": ["nvfp4"], "quantizer": "gptq"}, "quantizes with rtn, not gptq"),
    ({"target": "torchao", "format_names": ["w4g128s"]}, "asymmetric only"),
    ({"target": "mlx", "format_names": ["nvfp4"]}, "MLX quantizes affine integers"),
    ({"format_names": ["q4_K", "q6_K"], "quantizer": "gptq"}, "use --quantizer rtn"),
])
def test_what_a_runtime_cannot_serve_is_refused_with_the_reason(kw, words):
    with pytest.raises(ValueError, match=words):
        validate(spec(**kw))


def test_unknown_target_and_format_names_are_refused():
    with pytest.raises(ValidationError, match="unknown target 'ollama'"):
        spec(target="ollama")
    with pytest.raises(ValueError, match="unknown format 'q4_k'"):
        validate(spec(format_names=["q4_k"]))
    with pytest.raises(ValidationError, match="not both"):
        spec(format_names=["q4_K"], bits=[4])


def test_a_request_names_target_and_formats():
    (s,) = specs_from_request({"budgets": {"avg_bits": 5}, "target": "llamacpp",
                               "formats": {"names": ["q4_K", "q6_K"], "group_size": [32, 64, 128]}}, "m")
    assert [f.label for f in s.menu()] == ["q4_K", "q6_K"] and s.target == "llamacpp"
    (s,) = specs_from_request({"budgets": {"avg_bits": 5}, "target": "modelopt",
                               "formats": {"group_size": [32, 64, 128], "symmetric": False}}, "m")
    assert [f.label for f in s.menu()] == [f.label for f in TARGETS["modelopt"].menu_formats()]


def test_a_target_menu_keeps_only_what_every_layer_can_be_stored_in():
    from search.layers import LayerInfo
    layers = [LayerInfo("a", "linear", (576, 576), 576 * 576, 576, 576 * 576),
              LayerInfo("b", "linear", (576, 1536), 576 * 1536, 1536, 576 * 1536)]
    checked = validate(spec(target="vllm", budgets={"avg_bits": 6.0}), layers)
    assert {f.label for f in checked.parts.formats} == {"w4g32a", "w4g64a", "nvfp4", "w8pcs", "fp8_pc"}
    with pytest.raises(ValueError, match=r"cannot store a \(576 inputs\) in w4g128s"):
        validate(spec(target="vllm", format_names=["w4g128s", "w8pcs"], budgets={"avg_bits": 6.0}), layers)
    # llama.cpp stores a row its block does not divide in a fallback type: nothing is left out
    assert len(validate(spec(target="llamacpp", budgets={"avg_bits": 6.0}), layers).parts.formats) == 10


def test_the_menu_survives_the_trip_to_a_worker():
    """Specs travel as JSON (API → dispatcher → Ray task): a target's default menu and a named
    menu must come back the same, not as the integer menu or a conflict."""
    for kw in ({"target": "llamacpp"}, {"format_names": ["fp8", "w4pcs"]}, {"target": "vllm", "bits": [4]}):
        s = spec(**kw)
        back = SearchSpec(**s.model_dump(mode="json"))
        assert [f.label for f in back.menu()] == [f.label for f in s.menu()], kw
