"""The family table and the model library agree: every family a layout or a published name can produce has a
protocol row, and every row's templates are a set of its own name."""
from __future__ import annotations

from clip_model.checkpoint import LAYOUTS
from clip_model.names import published_names
from pipeline.model.families import FAMILIES, template_sets


def test_every_family_the_library_can_produce_has_a_protocol_row():
    produced = {layout.family for layout in LAYOUTS if layout.family} | {n.family for n in published_names()}
    assert produced - set(FAMILIES) == set()
    assert set(FAMILIES) - produced == set()  # and no row that nothing can load


def test_template_set_names_are_unique():
    names = [f.templates.name for f in FAMILIES.values()]
    shared = {n for n in names if names.count(n) > 1}
    assert all(len({FAMILIES[f].templates for f in FAMILIES if FAMILIES[f].templates.name == n}) == 1 for n in shared)
    assert {"none", "video"} <= set(template_sets())
