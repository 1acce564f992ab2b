"""LAMIC's list settings (enhance_factors, to_area, deoverlap) take any text: a value per reference or a named error."""

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from devkit.pack import pack

base = pack("attention_patches.kinds.base")
encoder_mod = pack("attention_patches.kinds.lamic.encoder")
safe_text = pack("models.safe_text")

PARSERS = {
    "enhance_factors": encoder_mod.parse_factors,
    "to_area": encoder_mod.parse_areas,
    "deoverlap": encoder_mod.parse_deoverlap,
}
# lone surrogates, digits of other scripts, separators, huge numbers, long runs of one character
HOSTILE = st.one_of(
    st.text(alphabet=st.characters(codec=None, min_codepoint=0, max_codepoint=0x10FFFF), max_size=60),
    st.text(alphabet="0123456789.,;: -e_٣\ud800", max_size=80),
    st.builds(lambda c, n: c * n, st.sampled_from(["9", ",", ";", "1,", "\ud800"]), st.integers(0, 5000)),
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(name=st.sampled_from(sorted(PARSERS)), text=HOSTILE, count=st.integers(1, 6))
def test_any_text_gives_one_value_per_reference_or_a_named_error(name, text, count):
    try:
        values = PARSERS[name](text, count)
    except base.SubjectSetupError as error:
        message = str(error)
        assert name in message, message
        assert len(message) < 1000, message  # bounded, whatever the text
        safe_text.printable(message).encode("utf-8")  # safe to log
        return
    assert len(values) == count


@pytest.mark.parametrize("name", sorted(PARSERS))
def test_a_list_longer_than_any_real_one_is_refused_not_cut(name):
    text = "1, " * (encoder_mod.MAX_LIST_TEXT // 3) + "1.3"  # cut at the limit it would read as another list
    with pytest.raises(base.SubjectSetupError, match=f"{name} is {len(text)} characters long"):
        PARSERS[name](text, 2)
