"""Layer-wise probing of cached hidden states: what each layer encodes, and how cheaply.

Every layer ``0 .. n_layers-1`` is probed on its own (layer 0 = embeddings). Three sets of
items take part, none of them ever seen in fine-tuning:

- probe-train: the rows of the probe cache (the reserved probe pool) whose item id is not in
  ``dev_ids``; every probe is fitted on these rows only, and so is the online code;
- probe-dev: the rows of the probe cache whose item id is in ``dev_ids``; they choose the
  probe's C where a list of values is given, and are scored (measures prefixed ``dev_``) so
  that the reported best layer can be picked on them rather than on the test set;
- test: the rows of the test cache, scored with the measures named as they are.

Features (column ``features`` of the output names what was used):

- NLI: a concatenation of per-item views. Pair caches (``meta["nli_view"] == "pair"``: one
  joint sequence per item) store ``cls`` (the position the classification head reads) and
  ``premise`` / ``hypothesis`` (means over each segment of the joint pass); separate caches
  (``nli_view`` "separate" or absent) store ``premise`` / ``hypothesis`` from two sequences.
  ``nli_features``: ``cls``, ``segments`` (``premise+hypothesis``) or ``cls_segments``
  (``cls+premise+hypothesis``); ``auto`` = ``cls_segments`` for pair caches, ``segments`` for
  separate ones. ``nli_interactions`` appends ``|u-v|`` and ``u*v`` of the premise (u) and
  hypothesis (v) vectors.
- NER: the word vector (``word:<pooling>``, the sub-word pooling in ``meta["ner_pooling"]``,
  ``mean`` where the cache does not say), one row per word; the label is the entity type with
  B/I merged (``B-DNA``, ``I-DNA`` -> ``DNA``) or ``O``. Words are grouped into sentences
  through ``meta["word_item"]`` (needed by the sequence probe and to split by item).

Probes (``settings.probes``): ``linear`` (standardise + multinomial logistic regression),
``mlp`` (standardise + one hidden layer), ``svm`` (standardise + RBF SVC, the study's NLI probe)
and ``bilstm_crf`` (BiLSTM + CRF over each sentence's word vectors, the study's NER probe).
``linear.C`` and ``svm.C`` may be lists: per layer, the C with the best probe-dev macro-F1 is
used (ties: the smaller C, i.e. the stronger regularisation), reported as ``chosen_C``.

Controls:

- Selectivity (Hewitt & Liang, 2019): the same probe (same layer, same C) is trained on a
  control task whose labels are a fixed random function of a lexical key, and
  ``selectivity = accuracy - control_accuracy``. Keys recur between probe-train and the
  scored splits and the key -> label map is the same in all of them, so the control is
  learnable exactly by memorising keys: a high control score means the probe can memorise
  surface types from these features, and selectivity is what is left beyond that.

  - NER: the key is the word type (the lower-cased word string). Besides accuracy (``O``
    dominates NER, so accuracy selectivity is nearly blind) it is reported on macro-F1
    (``control_macro_f1``, ``selectivity_macro_f1``) and on entity words, the words whose
    gold task label is not ``O`` (``entity_accuracy``, ``control_entity_accuracy`` = control
    accuracy on those same words, ``selectivity_entity``).
  - NLI (``nli_control: lexical``): the key is the lexical type of the hypothesis, its first
    content word (:func:`hypothesis_type`: whitespace words, lower-cased, letters only, the
    first one not in :data:`STOP_WORDS`; the first word with letters if all are stop words;
    the first whitespace word if none has letters). ``control_coverage`` is the share of
    scored items whose key occurs among the probe-train keys: only those can be memorised,
    the rest are at chance. ``nli_control: none`` reports no NLI selectivity.

  Control labels come from :func:`selectivity_control_labels`: drawn per key from the
  probe-train label distribution with a hash of (seed, key), so every split and every grid
  point sees the same control task.
- MDL, online code (Voita & Titov, 2020), on the probe-train rows: see
  :func:`online_codelength`; the linear probe coding each block picks its L2 strength on
  held-out earlier items (:class:`SelectedLinearProbe`), so that it is not over-confident at
  small training sizes.

Every random choice is seeded by ``settings.seed`` and never depends on the order in which
layers are processed, so results are identical for any ``n_jobs``.
"""

from finescope.probe.controls import STOP_WORDS, hypothesis_type, selectivity_control_labels
from finescope.probe.estimators import LinearProbe, SelectedLinearProbe, make_probe
from finescope.probe.features import (
    layer_features,
    merge_ner_tag,
    open_cache,
    resolve_features,
    sample_item_indices,
)
from finescope.probe.mdl import online_codelength
from finescope.probe.run import (
    control_scores,
    probe_job,
    probe_layer,
    run_probes,
    score_predictions,
)
from finescope.settings.probe import (
    BilstmCrfSettings,
    LinearSettings,
    MdlSettings,
    MlpSettings,
    ProbeSettings,
    SvmSettings,
    mdl_block_ends,
)

__all__ = [
    "STOP_WORDS",
    "BilstmCrfSettings",
    "LinearProbe",
    "LinearSettings",
    "MdlSettings",
    "MlpSettings",
    "ProbeSettings",
    "SelectedLinearProbe",
    "SvmSettings",
    "control_scores",
    "hypothesis_type",
    "layer_features",
    "make_probe",
    "mdl_block_ends",
    "merge_ner_tag",
    "online_codelength",
    "open_cache",
    "probe_job",
    "probe_layer",
    "resolve_features",
    "run_probes",
    "sample_item_indices",
    "score_predictions",
    "selectivity_control_labels",
]
