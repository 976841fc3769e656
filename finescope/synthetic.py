"""A seeded synthetic biomedical corpus for NER (JNLPBA-style) and NLI (MedNLI-style).

Everything here is generated from small hand-written templates and word lists, so the workflow
can run end to end without any licensed data. The tasks are learnable (entity words come from
type-specific vocabularies, labels follow from the text) but not trivial:

- NER: gene symbols are shared by protein, DNA and RNA mentions, so the type depends on the
  following word ("IL-2 gene", "IL-2 mRNA", "IL-2 receptor"); cell lines and cell types share
  words ("Jurkat T cells" vs "T cells"); chemicals and method names look like names but are
  not entities.
- NLI: the hypothesis is drawn first, in a form that does not depend on the label, and the
  premise is then written so that it entails, contradicts or says nothing about it. Labels
  therefore need the pair: negation and its scope, which protein acts on which, doses and
  counts against thresholds, symptom paraphrases, and neutral premises that mention the same
  words without settling the claim.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable, Iterable

from finescope.errors import FinescopeError
from finescope.settings import tasks

NLI_LABELS = ("contradiction", "entailment", "neutral")
NER_TYPES = ("DNA", "RNA", "cell_line", "cell_type", "protein")
SPLITS = ("train", "dev", "test")

MIN_TOKENS = 8
MAX_TOKENS = 25

# fmt: off
# Gene symbols: shared by the protein, DNA and RNA vocabularies on purpose.
GENES = [
    "IL-2", "IL-4", "IL-6", "IL-10", "IL-12", "TNF-alpha", "IFN-gamma", "GM-CSF", "c-fos",
    "c-jun", "c-myc", "Bcl-2", "Bcl-6", "GATA-3", "GATA-1", "Oct-2", "PU.1", "CD28", "CD40",
    "CD4", "CD8", "p53", "Egr-1", "NFATc1", "STAT3", "STAT5", "IRF-1", "HLA-DR", "MHC class II",
    "beta-globin", "T-bet", "RUNX1", "Ets-1", "CIITA", "Fas ligand", "CTLA-4", "IkappaBalpha",
]
PROTEIN_ONLY = [
    "NF-kappa B", "AP-1", "Sp1", "CREB", "ATF-2", "c-Rel", "p65", "p50", "RelB", "Tax",
    "EBNA-2", "JAK1", "JAK2", "ERK2", "p38 MAP kinase", "protein kinase C", "calcineurin",
    "glucocorticoid receptor", "estrogen receptor", "vitamin D receptor", "Lck", "ZAP-70",
    "cyclin D1", "histone deacetylase 1", "TRAF2", "retinoic acid receptor alpha",
]
PROTEIN_SUFFIXES = [[], [], [], ["protein"], ["receptor"], ["transcription", "factor"]]
DNA_SUFFIXES = [["gene"], ["promoter"], ["enhancer"], ["locus"], ["promoter", "region"],
                ["gene", "promoter"], ["3'", "enhancer"]]
DNA_STANDALONE = [
    "kappa B site", "TATA box", "AP-1 binding site", "HIV-1 long terminal repeat", "HIV-1 LTR",
    "cAMP response element", "GATA motif", "octamer motif", "CpG island", "E box",
    "interferon-stimulated response element", "glucocorticoid response element",
]
RNA_SUFFIXES = [["mRNA"], ["mRNA"], ["transcripts"], ["messenger", "RNA"], ["mRNA", "species"]]
RNA_STANDALONE = ["poly ( A ) + RNA", "antisense RNA", "U1 snRNA", "7SK RNA"]
CELL_TYPES = [
    "T cells", "B cells", "monocytes", "macrophages", "neutrophils", "eosinophils", "thymocytes",
    "peripheral blood lymphocytes", "peripheral blood mononuclear cells", "natural killer cells",
    "CD4+ T cells", "CD8+ T lymphocytes", "dendritic cells", "erythroid progenitor cells",
    "resting B lymphocytes", "activated T cells", "human monocytes", "mast cells",
    "hematopoietic stem cells", "platelets", "alveolar macrophages", "memory T cells",
]
CELL_LINES = [
    "Jurkat cells", "Jurkat T cells", "HeLa cells", "U937 cells", "THP-1 cells", "K562 cells",
    "HL-60 cells", "Raji cells", "EL4 cells", "RAW 264.7 macrophages", "Ramos B cells",
    "MOLT-4 cells", "Daudi cells", "HEK 293 cells", "Mono Mac 6 cells", "CEM T cells",
    "BJAB cells", "HUT 78 cells", "NIH 3T3 fibroblasts", "COS-7 cells", "Namalwa cells",
]
# Name-like words that are not entities in JNLPBA: they stop "capitalised = entity" shortcuts.
CHEMICALS = ["PMA", "ionomycin", "cyclosporin A", "dexamethasone", "LPS", "forskolin",
             "H2O2", "staurosporine", "FK506", "calcitriol", "retinoic acid", "PHA"]
METHODS = ["Western blot analysis", "gel shift assays", "transient transfection",
           "Northern blotting", "flow cytometry", "chromatin immunoprecipitation",
           "reporter gene assays", "RT-PCR"]
ACT_VERBS = ["activates", "induces", "represses", "inhibits", "enhances", "regulates"]
ACT_PAST = ["activated", "induced", "repressed", "inhibited", "enhanced", "regulated"]
LEAD_INS = [["In", "addition", ","], ["Moreover", ","], ["However", ","], ["As", "expected", ","],
            ["Interestingly", ","]]

# NLI vocabulary.
DRUGS = ["metformin", "atorvastatin", "lisinopril", "warfarin", "prednisone", "amoxicillin",
         "furosemide", "heparin", "insulin glargine", "vitamin D", "ivermectin", "remdesivir",
         "hydroxychloroquine", "azithromycin", "dexamethasone", "zinc sulfate", "aspirin"]
MARKERS = ["C-reactive protein", "interleukin-6", "ferritin", "D-dimer", "troponin",
           "creatinine", "LDL cholesterol", "fasting glucose", "lactate", "procalcitonin"]
CONDITIONS = ["pneumonia", "diabetes", "hypertension", "atrial fibrillation", "sepsis",
              "asthma", "heart failure", "chronic kidney disease", "obesity", "anemia"]
POPULATIONS = ["elderly patients", "hospitalized adults", "children", "pregnant women",
               "outpatients", "intensive care patients", "healthy volunteers", "smokers"]
DOSES = [2, 5, 10, 20, 25, 40, 50, 80, 100, 200, 250, 500]
# (term used in a premise, paraphrase a hypothesis may use instead)
SYMPTOMS = [
    ("shortness of breath", "dyspnea"), ("high blood pressure", "hypertension"),
    ("chest pain", "thoracic pain"), ("a fever", "an elevated temperature"),
    ("a persistent cough", "a chronic cough"), ("nausea", "queasiness"),
    ("a rapid heart rate", "tachycardia"), ("swelling of the legs", "leg edema"),
    ("loss of smell", "anosmia"), ("fatigue", "tiredness"), ("headache", "head pain"),
]
REL_VERBS = [  # (active, passive, negated active)
    ("phosphorylates", "is phosphorylated by", "does not phosphorylate"),
    ("binds", "is bound by", "does not bind"),
    ("cleaves", "is cleaved by", "does not cleave"),
    ("ubiquitinates", "is ubiquitinated by", "does not ubiquitinate"),
    ("activates", "is activated by", "does not activate"),
]
# Effect of a drug on a marker: direction -> (past tense, base form) wordings.
EFFECT_WORDS = {
    "down": [("reduced", "reduce"), ("lowered", "lower"), ("decreased", "decrease")],
    "up": [("increased", "increase"), ("raised", "raise"), ("elevated", "elevate")],
}
NO_EFFECT = ["did not change", "had no effect on", "did not alter"]
# fmt: on


def split_seed(seed: int, task: str, split: str) -> int:
    """A stable per-split seed, so each split draws from its own random stream.

    Parameters
    ----------
    seed
        The study seed.
    task, split
        Which stream.

    Returns
    -------
    int
        A 64-bit seed that does not depend on Python's hash randomisation.
    """
    digest = hashlib.sha256(f"synthetic/{seed}/{task}/{split}".encode()).digest()
    return int.from_bytes(digest[:8], "big")


def _cap(text: str) -> str:
    return text[0].upper() + text[1:]


# ---------------------------------------------------------------------------------------------
# NER
# ---------------------------------------------------------------------------------------------


def _protein(rng: random.Random) -> list[str]:
    if rng.random() < 0.5:
        return rng.choice(PROTEIN_ONLY).split()
    return rng.choice(GENES).split() + rng.choice(PROTEIN_SUFFIXES)


def _dna(rng: random.Random) -> list[str]:
    if rng.random() < 0.3:
        return rng.choice(DNA_STANDALONE).split()
    return rng.choice(GENES).split() + rng.choice(DNA_SUFFIXES)


def _rna(rng: random.Random) -> list[str]:
    if rng.random() < 0.15:
        return rng.choice(RNA_STANDALONE).split()
    return rng.choice(GENES).split() + rng.choice(RNA_SUFFIXES)


ENTITY_MAKERS: dict[str, Callable[[random.Random], list[str]]] = {
    "protein": _protein,
    "DNA": _dna,
    "RNA": _rna,
    "cell_type": lambda rng: rng.choice(CELL_TYPES).split(),
    "cell_line": lambda rng: rng.choice(CELL_LINES).split(),
}
FILLERS: dict[str, Callable[[random.Random], list[str]]] = {
    "chem": lambda rng: rng.choice(CHEMICALS).split(),
    "method": lambda rng: rng.choice(METHODS).split(),
    "act": lambda rng: [rng.choice(ACT_VERBS)],
    "actp": lambda rng: [rng.choice(ACT_PAST)],
}

# Slots: {protein} {DNA} {RNA} {cell_type} {cell_line}, {cell} (either cell slot), and the
# non-entity fillers {chem} {method} {act} {actp}. Tokens are separated by single spaces.
NER_TEMPLATES = [
    "{protein} {act} transcription of the {DNA} in {cell} .",
    "Expression of {RNA} was {actp} by {chem} in {cell} .",
    "In {cell} , {protein} binds to the {DNA} and {act} its activity .",
    "{method} showed that {protein} and {protein} form a complex in {cell} .",
    "Levels of {RNA} increased within two hours of stimulation with {chem} .",
    "We cloned the {DNA} and found a binding site for {protein} .",
    "Treatment of {cell_line} with {chem} {actp} nuclear translocation of {protein} .",
    "{cell_type} from healthy donors express high levels of {protein} but not {protein} .",
    "Mutation of the {DNA} abolished induction by {protein} in {cell_line} .",
    "The half-life of {RNA} was prolonged in {cell} exposed to {chem} .",
    "Unlike {cell_type} , {cell_line} constitutively express {RNA} .",
    "{protein} is required for {chem} -induced expression of {RNA} in {cell} .",
    "These results suggest that {protein} {act} the {DNA} through a novel mechanism .",
    "Transfection of {cell_line} with a construct containing the {DNA} {actp} reporter activity .",
    "{method} revealed that {protein} is phosphorylated in {cell} after exposure to {chem} .",
    "Both {protein} and {protein} were detected in nuclear extracts of {cell} .",
    "The {DNA} contains two sites that are recognised by {protein} .",
    "Differentiation of {cell_type} was accompanied by loss of {RNA} .",
    "{cell_line} , but not {cell_type} , responded to {chem} with a rise in {RNA} .",
    "Deletion analysis of the {DNA} identified a region required for activity in {cell} .",
    "Antibodies against {protein} blocked the proliferation of {cell} in response to {chem} .",
    "Steady-state levels of {RNA} and {RNA} were measured by {method} .",
    "{protein} {act} {protein} activity in {cell} but has no effect in {cell} .",
    # Sentences without entities: common in abstracts, and they keep "O" from being a shortcut.
    "Cells were washed twice and incubated with {chem} for 30 minutes at 37 degrees .",
    "The data were analysed with {method} and are shown as mean values of three experiments .",
    "These findings have implications for the treatment of inflammatory disease .",
    "{chem} and {chem} had additive effects in all experiments performed in this study .",
]


def _fill_ner(template: str, rng: random.Random) -> tuple[list[str], list[str]]:
    tokens: list[str] = []
    tags: list[str] = []
    for part in template.split():
        slot = part[1:-1] if part.startswith("{") and part.endswith("}") else None
        if slot == "cell":
            slot = rng.choice(["cell_type", "cell_line"])
        if slot in ENTITY_MAKERS:
            words = ENTITY_MAKERS[slot](rng)
            tags += [f"B-{slot}"] + [f"I-{slot}"] * (len(words) - 1)
        elif slot in FILLERS:
            words = FILLERS[slot](rng)
            if not tokens:  # sentence-initial filler: "Gel shift assays showed ..."
                words[0] = _cap(words[0])
            tags += ["O"] * len(words)
        else:
            words = [part]
            tags.append("O")
        tokens += words
    return tokens, tags


def _ner_item(rng: random.Random) -> dict:
    while True:
        tokens, tags = _fill_ner(rng.choice(NER_TEMPLATES), rng)
        if rng.random() < 0.25:  # a lead-in varies sentence starts and lengths
            lead = rng.choice(LEAD_INS)
            first = tokens[0]
            if tags[0] == "O" and first[:1].isupper() and first[1:].islower():
                first = first.lower()  # "Cells were ..." -> "However , cells were ..."
            tokens = lead + [first] + tokens[1:]
            tags = ["O"] * len(lead) + tags
        if MIN_TOKENS <= len(tokens) <= MAX_TOKENS:
            return {"tokens": tokens, "tags": tags}


# ---------------------------------------------------------------------------------------------
# NLI. Each family draws a claim (the hypothesis) without looking at the label, then writes a
# premise in which the claim is true (entailment), false (contradiction) or not settled
# (neutral, often with the same words present so word overlap does not give it away).
# ---------------------------------------------------------------------------------------------


def _nli_relation(rng: random.Random, label: str) -> tuple[str, str]:
    """Which protein acts on which: passive paraphrase, excluded partner, negation."""
    x, y, z, w = rng.sample(PROTEIN_ONLY + GENES, 4)
    active, passive, negated = rng.choice(REL_VERBS)
    cell = rng.choice(CELL_TYPES + CELL_LINES)
    positive = rng.random() < 0.5  # claim "x acts on y", or "x does not act on y"
    if positive:
        hyp = rng.choice([f"{x} {active} {y} .", f"{y} {passive} {x} ."])
    else:
        hyp = rng.choice([f"{x} {negated} {y} .", f"{y} {passive.replace('is ', 'is not ')} {x} ."])
    if label == "neutral":
        premise = rng.choice(
            [
                f"In {cell} , {x} {active} {z} but not {w} .",
                f"{z} {passive} {x} , whereas {w} has no effect on {z} in {cell} .",
                f"{x} and {y} are both expressed in {cell} , where {x} {active} {z} .",
                f"{y} {passive} {z} , and {x} is found in the same complex in {cell} .",
            ]
        )
    elif (label == "entailment") == positive:  # the premise must say x acts on y
        premise = rng.choice(
            [
                f"In {cell} , {x} {active} {y} but not {z} .",
                f"{y} {passive} {x} , whereas {z} has no effect on {y} in {cell} .",
                f"{y} {passive} {x} , and this step is required for signalling in {cell} .",
            ]
        )
    else:  # the premise must say x does not act on y
        premise = rng.choice(
            [
                f"In {cell} , {x} {active} {z} but not {y} .",
                f"{y} {passive} {z} , whereas {x} has no effect on {y} in {cell} .",
                f"In {cell} , {x} {negated} {y} , although both are abundant .",
            ]
        )
    return premise, hyp


def _nli_dose(rng: random.Random, label: str) -> tuple[str, str]:
    """Quantities: a stated dose or duration against a threshold in the claim."""
    drug, other_drug = rng.sample(DRUGS, 2)
    pop = rng.choice(POPULATIONS)
    claim = rng.choice(["more", "less", "exact", "at_least", "fewer_weeks"])
    threshold = rng.choice(DOSES[1:-1])
    span = rng.randint(3, 20)
    hyp = {
        "more": f"The daily dose of {drug} was more than {threshold} mg .",
        "less": f"The daily dose of {drug} was less than {threshold} mg .",
        "exact": f"Each day the {pop} took {threshold} mg of {drug} .",
        "at_least": f"The {pop} took {drug} for at least {span} weeks .",
        "fewer_weeks": f"The {pop} took {drug} for fewer than {span} weeks .",
    }[claim]
    about_dose = claim in ("more", "less", "exact")
    above = [d for d in DOSES if d > threshold]
    below = [d for d in DOSES if d < threshold]
    dose, weeks = rng.choice(DOSES), rng.randint(2, 26)
    if label != "neutral":
        holds = label == "entailment"
        if claim == "more":
            dose = rng.choice(above if holds else below)
        elif claim == "less":
            dose = rng.choice(below if holds else above)
        elif claim == "exact":
            dose = threshold if holds else rng.choice(above + below)
        elif claim == "at_least":
            weeks = rng.randint(span, span + 12) if holds else rng.randint(1, span - 1)
        else:
            weeks = rng.randint(1, span - 1) if holds else rng.randint(span, span + 12)
    tail = rng.choice(
        [
            "",
            " , and " + rng.choice(MARKERS) + " was measured monthly",
            " in addition to standard care",
        ]
    )
    full = f"{_cap(pop)} received {dose} mg of {drug} daily for {weeks} weeks{tail} ."
    dose_only = f"{_cap(pop)} received {dose} mg of {drug} once a day{tail} ."
    weeks_only = f"{_cap(pop)} were given {drug} daily for {weeks} weeks{tail} ."
    # The second drug appears under every label, so its presence is no cue by itself.
    if label == "neutral":  # the claimed quantity is not stated, or stated for another drug
        other = (
            f"{_cap(pop)} received {dose} mg of {other_drug} daily for {weeks} weeks , "
            f"and {drug} was given when needed ."
        )
        premise = rng.choice([weeks_only if about_dose else dose_only, other])
    else:
        both = (
            f"{_cap(pop)} received {dose} mg of {drug} daily for {weeks} weeks , "
            f"and {other_drug} was given when needed ."
        )
        premise = rng.choice([full, dose_only if about_dose else weeks_only, both])
    return premise, hyp


def _effect_phrase(rng: random.Random, direction: str) -> str:
    if direction == "none":
        return rng.choice(NO_EFFECT)
    return rng.choice(EFFECT_WORDS[direction])[0]


def _nli_effect(rng: random.Random, label: str) -> tuple[str, str]:
    """Negation and direction: 'reduced' entails 'did not increase' and contradicts 'raised'."""
    drug = rng.choice(DRUGS)
    marker, other = rng.sample(MARKERS, 2)
    pop = rng.choice(POPULATIONS)
    claimed = rng.choice(["down", "up"])
    negated = rng.random() < 0.4
    past, base = rng.choice(EFFECT_WORDS[claimed])
    verb = f"did not {base}" if negated else past
    hyp = f"{_cap(drug)} {verb} {marker} levels in {pop} ."
    if label == "neutral":
        premise = rng.choice(
            [
                f"In a randomized trial , {drug} {_effect_phrase(rng, claimed)} {other} levels "
                f"in {pop} .",
                f"In a randomized trial , {drug} {_effect_phrase(rng, claimed)} {other} levels "
                f"in {pop} , but {marker} was not measured .",
            ]
        )
        return premise, hyp
    # Directions under which the claim is true: "X" holds only for X; "not X" for the others.
    true_dirs = [d for d in ("down", "up", "none") if (d == claimed) != negated]
    false_dirs = [d for d in ("down", "up", "none") if d not in true_dirs]
    actual = rng.choice(true_dirs if label == "entailment" else false_dirs)
    premise = f"In a randomized trial , {drug} {_effect_phrase(rng, actual)} {marker} levels "
    premise += f"in {pop} , but {other} was not measured ." if rng.random() < 0.5 else f"in {pop} ."
    return premise, hyp


def _nli_patient(rng: random.Random, label: str) -> tuple[str, str]:
    """Clinical notes: symptom paraphrases, denied symptoms, age comparisons, sex, history."""
    age = rng.randint(25, 90)
    sex, other_sex = rng.choice([("man", "woman"), ("woman", "man")])
    (s1, p1), (s2, p2), (s3, p3), (s4, p4) = rng.sample(SYMPTOMS, 4)
    cond, cond2 = rng.sample(CONDITIONS, 2)
    claim = rng.choice(["has", "has_not", "older", "younger", "sex", "history"])
    threshold = rng.randint(35, 80)
    # What the premise states, before the label adjusts it.
    present, denied = [(s1, p1), (s2, p2)], (s3, p3)
    show_age, show_sex = rng.random() < 0.85, rng.random() < 0.85
    history = f"a history of {cond}" if rng.random() < 0.7 else f"no history of {cond}"
    holds = label == "entailment"
    if claim in ("has", "has_not"):
        if label == "neutral":
            target = (s4, p4)
        elif (claim == "has") == holds:
            target = rng.choice(present)
        else:
            target = denied
        word = rng.choice(target)
        hyp = (
            f"The patient has {word} ." if claim == "has" else f"The patient does not have {word} ."
        )
    elif claim in ("older", "younger"):
        if label == "neutral":
            show_age = False
        else:
            show_age = True
            older = (claim == "older") == holds
            age = threshold + rng.randint(1, 15) if older else threshold - rng.randint(1, 15)
        hyp = f"The patient is {claim} than {threshold} ."
    elif claim == "sex":
        claimed = rng.choice([sex, other_sex])
        if label == "neutral":
            show_sex = False
        else:
            show_sex = True
            sex = claimed if holds else ("woman" if claimed == "man" else "man")
        hyp = f"The patient is a {claimed} ."
    else:
        if label == "neutral":
            hyp = f"The patient has a history of {cond2} ."
        else:
            history = f"a history of {cond}" if holds else f"no history of {cond}"
            hyp = f"The patient has a history of {cond} ."
    who = f"{age}-year-old " if show_age else ""
    person = sex if show_sex else "patient"
    first = who or person
    article = "An" if first[0] in "aeiou8" or first.startswith(("11-", "18-")) else "A"
    premise = (
        f"{article} {who}{person} with {history} presents with {present[0][0]} and "
        f"{present[1][0]} but denies {denied[0]} ."
    )
    return premise, hyp


def _nli_proportion(rng: random.Random, label: str) -> tuple[str, str]:
    """Counts out of a total against most / fewer than half / none / at least one / exact."""
    total = rng.randint(20, 400)
    cond, cond2 = rng.sample(CONDITIONS, 2)
    pop = rng.choice(POPULATIONS)
    claim = rng.choice(["most", "fewer_half", "none", "some", "exact"])
    k = rng.randint(0, total)
    holds = label == "entailment"
    if label != "neutral":
        majority = rng.randint(total // 2 + 1, total)
        minority = rng.randint(0, (total - 1) // 2)
        k = {
            "most": majority if holds else minority,
            "fewer_half": minority if holds else majority,
            "none": 0 if holds else rng.randint(1, total),
            "some": rng.randint(1, total) if holds else 0,
            "exact": rng.randint(0, total),
        }[claim]
    not_developed = total - k
    if claim == "exact" and label == "contradiction":
        not_developed = rng.choice(
            [v for v in (total - k - 1, total - k + 1, k) if 0 <= v <= total and v != total - k]
            or [total - k + 1]
        )
    hyp = {
        "most": f"Most of the {pop} developed {cond} .",
        "fewer_half": f"Fewer than half of the {pop} developed {cond} .",
        "none": f"None of the {pop} developed {cond} .",
        "some": f"At least one of the {pop} developed {cond} .",
        "exact": f"{not_developed} of the {pop} did not develop {cond} .",
    }[claim]
    counted = cond2 if label == "neutral" else cond
    count = "none" if k == 0 else str(k)
    premise = f"Of the {total} {pop} enrolled , {count} developed {counted} during follow-up"
    if rng.random() < 0.5:  # an unrecorded outcome: the claimed one only when neutral
        premise += f" ; {cond if label == 'neutral' else cond2} was not recorded"
    return premise + " .", hyp


NLI_FAMILIES = [_nli_relation, _nli_dose, _nli_effect, _nli_patient, _nli_proportion]


def _nli_item(rng: random.Random, label: str) -> dict:
    premise, hyp = rng.choice(NLI_FAMILIES)(rng, label)
    return {"premise": premise, "hypothesis": hyp, "label": label}


# ---------------------------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------------------------


def item_key(item: dict) -> tuple:
    """The content of an item without its id, for duplicate detection across splits.

    Parameters
    ----------
    item
        Canonical NLI or NER item.

    Returns
    -------
    tuple
        ``("nli", premise, hypothesis)`` or ``("ner", tokens, tags)``.
    """
    if "tokens" in item:
        return ("ner", tuple(item["tokens"]), tuple(item["tags"]))
    return ("nli", item["premise"], item["hypothesis"])


def generate(
    task: str, n: int, seed: int, id_prefix: str, exclude: Iterable[tuple] | None = None
) -> list[dict]:
    """Generate ``n`` distinct synthetic items in the canonical item form.

    Parameters
    ----------
    task
        "nli" or "ner".
    n
        Number of items (>= 0).
    seed
        Seed of the ``random.Random`` stream; the same seed always gives the same items.
    id_prefix
        Items get ids ``f"{id_prefix}-{i}"``.
    exclude
        Item keys (see :func:`item_key`) that must not be produced, e.g. the train items when
        generating test items.

    Returns
    -------
    list[dict]
        NLI: ``{"id", "premise", "hypothesis", "label"}`` with labels balanced (counts differ by
        at most one). NER: ``{"id", "tokens", "tags"}`` with IOB2 tags over DNA, RNA, cell_line,
        cell_type and protein.
    """
    if task not in tasks():
        names = " or ".join(map(repr, tasks()))
        raise FinescopeError(f"synthetic data: unknown task {task!r}; use {names}.")
    if n < 0:
        raise FinescopeError(f"synthetic data: item count {n} is negative; use a count >= 0.")
    rng = random.Random(seed)
    seen = set(exclude or ())
    labels = [NLI_LABELS[i % len(NLI_LABELS)] for i in range(n)]
    rng.shuffle(labels)
    items: list[dict] = []
    for i in range(n):
        for _attempt in range(1000):
            item = _nli_item(rng, labels[i]) if task == "nli" else _ner_item(rng)
            key = item_key(item)
            if key not in seen:
                seen.add(key)
                break
        else:
            raise FinescopeError(
                f"synthetic data: could not generate {n} distinct {task} items (stopped at {i}); "
                "ask for fewer synthetic items."
            )
        items.append({"id": f"{id_prefix}-{i}", **item})
    return items


def generate_splits(task: str, sizes: dict[str, int], seed: int) -> dict[str, list[dict]]:
    """Generate train, dev and test with separate seeds and no item shared between splits.

    Parameters
    ----------
    task
        "nli" or "ner".
    sizes
        ``{"train": n, "dev": n, "test": n}``.
    seed
        Study seed; each split uses :func:`split_seed` of it.

    Returns
    -------
    dict[str, list[dict]]
        Items per split, ids ``"<split>-<i>"``.
    """
    out: dict[str, list[dict]] = {}
    used: set[tuple] = set()
    for split in SPLITS:
        items = generate(task, sizes.get(split, 0), split_seed(seed, task, split), split, used)
        used.update(item_key(item) for item in items)
        out[split] = items
    return out
