"""Every model family's protocol, declared once: what each job takes from a family by default, read from the
family's own evaluation code (the sources beside each row). Torch-free: settings, configs and ``models`` read it
without loading a model.

A family is named by its checkpoint (``clip_model``'s layouts set ``Checkpoint.family``; our own format stores it);
this table is the one place that name is looked up. Its fields choose among a few strategies, each written once:

    visual   frames            each frame alone; windows share frames; any pooling      (visual.FrameVisual)
             neighbour_frames  a clip's frames together, each seeing its neighbours     (visual.NeighbourVisual)
             clips             a clip's frames through a video encoder: one row + tokens (visual.ClipVisual)
    text     embeddings        one unit text per label, cosines to the video            (scorers.LabelScorer)
             template_probabilities  one text per template, softmaxes averaged           (scorers.TemplateScorer)
             video_conditioned  label texts conditioned on each video's tokens           (scorers.ConditionedScorer)
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from clip_model.errors import UserError

Visual = Literal["frames", "neighbour_frames", "clips"]
Text = Literal["embeddings", "template_probabilities", "video_conditioned"]
Scoring = Literal["softmax", "sigmoid"]  # over the labels (they sum to one) | each label its own probability
LogitScale = Literal["learned", "learned_max_100", "fixed_100"]  # exp(logit_scale), capped at 100 (CLIP), or 100
ViewEnsemble = Literal["probabilities", "logits"]  # average the views' probabilities | softmax of summed logits
# mean / max / temporal pool frame embeddings into a unit vector; mean_of_unit averages the unit frame embeddings;
# frame_scores scores every frame and averages the probabilities (video_text.VideoTextModel.view_probs)
Pooling = Literal["mean", "max", "temporal", "frame_scores", "mean_of_unit"]
POOLINGS: tuple[Pooling, ...] = ("mean", "max", "temporal", "frame_scores", "mean_of_unit")
WINDOW_POOLINGS: tuple[Pooling, ...] = tuple(p for p in POOLINGS if p != "frame_scores")  # tag: a window's one vector


@dataclass(frozen=True)
class Templates:
    """A named set of prompt templates, each holding ``{}`` (or ``{0}``): the name is what settings record and
    ``--templates`` accepts."""

    name: str
    texts: tuple[str, ...]


VIDEO = Templates("video", ("a video of a person {}.", "a video of someone {}.", "a clip of a person {}.",
                            "a photo of a person {}.", "a person {}.", "{}"))
NONE = Templates("none", ("{}",))
_ACTIONS = ("{}.", "a person {}.", "a person using {}.", "a person doing {}.", "a person during {}.",
            "a person performing {}.", "a person practicing {}.")
_OPENVCLIP = tuple(f"{prefix} {a}" for prefix in ("a photo of", "a video of", "a example of",  # sic
                                                  "a demonstration of") for a in _ACTIONS)


@dataclass(frozen=True)
class Family:
    """What a family brings to every job as its defaults."""

    visual: Visual
    templates: Templates
    scoring: Scoring = "softmax"
    logit_scale: LogitScale = "learned"
    text: Text = "embeddings"
    frames: int = 8  # frames per clip by default (an X-CLIP checkpoint fixes its own)
    pooling: Pooling = "mean"
    view_ensemble: ViewEnsemble = "probabilities"
    trainable: bool = False  # train fine-tunes it (CLIP's softmax InfoNCE on its towers)

    def recorded(self, protocol: Mapping[str, Any] | None) -> Family:
        """This protocol with what a checkpoint recorded of its own in place of the family's: the pooling it
        trained, the frames of its clips (``clip_model``'s ``RECORDED_PROTOCOL``). Recorded templates are kept
        apart (``recorded_templates``): they have no set name."""
        if not protocol:
            return self
        return dataclasses.replace(self, pooling=protocol.get("pooling") or self.pooling,
                                   frames=protocol.get("frames") or self.frames)


def recorded_templates(family: Family, protocol: Mapping[str, Any] | None) -> str | tuple[str, ...]:
    """A model's default templates: those its checkpoint recorded (train writes its captions' prompt forms), else
    its family's set, by name."""
    texts = (protocol or {}).get("templates")
    return tuple(texts) if texts else family.templates.name


FAMILIES: dict[str, Family] = {
    "clip": Family("frames", VIDEO, logit_scale="learned_max_100", trainable=True),  # CLIP caps its scale at 100
    "siglip": Family("frames", VIDEO, scoring="sigmoid"),  # SigLIP: sigmoid(scale * cos + bias) per label
    # VideoX's evaluation tokenizes the bare class names; its MIT pools the frames
    "xclip": Family("clips", NONE, text="video_conditioned"),
    # ViFi-CLIP main.py, trainers/vificlip.py: 32 frames, ctx_init "a photo of a" + name + ".", mean then normalise
    "vificlip": Family("frames", Templates("vificlip", ("a photo of a {}.",)), frames=32),
    # ActionCLIP test.py: 8 frames through its fusion transformer, 100 * cos, a softmax per template, averaged;
    # utils/Text_Prompt.py text_aug, in its order
    "actionclip": Family("frames", Templates("actionclip", (
        "a photo of action {}", "a picture of action {}", "Human action of {}", "{}, an action",
        "{} this is an action", "{}, a video of action", "Playing action of {}", "{}", "Playing a kind of action, {}",
        "Doing a kind of action, {}", "Look, the human is {}", "Can you recognize the action of {}?",
        "Video classification of {}", "A video of {}", "The man is {}", "The woman is {}")),
        logit_scale="fixed_100", text="template_probabilities", pooling="temporal"),
    # Open-VCLIP temporalclip_video_model.py: 4 prefixes x 7 patterns averaged as unit embeddings; per-frame logits
    # averaged (= the mean of unit frame embeddings); the views' logits summed
    "openvclip": Family("neighbour_frames", Templates("openvclip", _OPENVCLIP), pooling="mean_of_unit",
                        view_ensemble="logits"),
    # FROSTER temporalclip_video_model.py: each of Open-VCLIP's 28 formatted with the name, then " " and the full
    # "Name: description" string; then that string alone. Its LLM-written descriptions are per dataset and not
    # shipped, so the full string is the name: "a photo of {0}. {0}"
    "froster": Family("neighbour_frames", Templates("froster", (
        *(t.replace("{}", "{0}") + " {0}" for t in _OPENVCLIP), "{}")), pooling="mean_of_unit",
        view_ensemble="logits"),
}



def template_sets() -> dict[str, Templates]:
    """The named template sets: none, video, and each family's own."""
    return {t.name: t for t in (NONE, VIDEO, *(f.templates for f in FAMILIES.values()))}


def family(name: str) -> Family:
    """The protocol of family ``name`` (what ``Checkpoint.family`` and ``model.family`` say)."""
    try:
        return FAMILIES[name]
    except KeyError:
        raise UserError(f"model family {name!r} has no protocol; known families: {', '.join(FAMILIES)}") from None
