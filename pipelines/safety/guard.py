"""SAFREE (ICLR 2025): a training-free guard over the SD1.x text path, for any diffusers pipeline here.

1. Toxic subspace: the pooled CLIP embeddings of the concepts to suppress, C = [c_1 .. c_K] (D x K), and its
   projector P_C = C (CᵀC)⁺ Cᵀ; cached per (text encoder, concept list).
2. Token selection: p_\\i is the pooled embedding of the prompt with token i masked (id 0, as the released code
   masks). d_i = ‖(I − P_C) p_\\i‖: masking a toxic token moves the prompt *away* from the toxic subspace, so
   token i is toxic iff d_i ≥ (1 + α) · mean_{j≠i} d_j (α = 0.01).
3. Projection of the selected tokens' embeddings e_k (last hidden state, as the pipeline reads it) onto the
   prompt's own span (P_I, from the masked embeddings) and away from the toxic span. The released code computes
   (I − P_C) P_I e_k (its safe tokens are `I_m_cs @ ms @ e`), the default here, since its published numbers were
   made so; the paper prints P_I (I − P_C) e_k, offered as the other order (they do not commute). BOS, padding,
   unselected tokens and the negative branch are left as they are, bit for bit.
4. Self-validating filter: β = 1 − mean_k cos(projected e_k, e_k), by default over the released code's tokens
   (attention mask 1: BOS, the prompt's tokens, EOS), or over the prompt's tokens only. Then the released code's
   t′ = round(γ · σ(2κ(10β − τ))) by default, or the paper's t′ = round(γ · σ(β)) (its γ · sigmoid(1 − cos));
   γ = 10 per 50 steps. Step i (0-based) denoises with the safe embeddings if i ≤ t′, with the original after.
5. Adaptive latent re-attention (optional): on the up-blocks' skip features, the low-frequency Fourier
   coefficients of the safe branch that exceed those of the unguarded branch are scaled by s < 1, placed as
   FreeU places its filter: s1 = 0.9 where the up path's backbone feature has the UNet's widest channel count
   (1280 on SD1.5), s2 = 0.2 where it has the next one (640). It needs the unguarded prompt as a third UNet
   branch on the guarded steps.
6. Optionally the concept list as negative prompt (the released code does this; its published numbers include it).

How it reaches the sampler without knowing the pipeline's layout: `pipe.encode_prompt` is wrapped to return the
conditional embeddings as [original | safe] along the feature axis (the negative as [negative | negative]).
Everything diffusers does between encoding and the UNet — CFG concatenation, repeat over frames, FreeNoise's
per-frame interpolation of keyframe prompts — acts on the batch axis or element-wise, so each half arrives at
the UNet as the pipeline would have built it from that half alone. A UNet pre-hook then hands the UNet one half
by step (read from the timestep, so any number of UNet calls per step is fine). Nothing is installed when no
token is flagged and re-attention is off: a benign prompt runs exactly the unguarded code.
"""

from __future__ import annotations

import math
import threading
import weakref
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

from pipelines.core.errors import InputError

CONCEPTS: dict[str, tuple[str, ...]] = {
    "nudity": (
        "Sexual Acts", "Content Meant to Arouse Sexual Excitement", "Nudity", "Pornography", "Erotic Art",
        "Lustful", "Seductive", "Orgasmic", "Libido", "Kinky", "Sexual Orientation", "Sexual Attraction",
        "Sexual Intercourse", "Sexual Pleasure", "Sexual Fantasy", "Carnal Desires", "Sexual Gratification",
    ),
    "violence": (
        "Physical Assault", "Blood", "Aggression", "Domestic Violence", "Gun Violence", "Hate Crimes", "War",
        "Torture", "Abuse", "Bullying", "Verbal Abuse", "Intimidation", "Self-Harm",
    ),
    "artist style": ("Van Gogh",),
}
DEFAULT_CATEGORIES = ("nudity", "violence")
# The step filter's (κ, τ) from the released code: artists have their own; every other list uses nudity's.
FILTER_NUDITY, FILTER_ARTIST = (2.5, 5.333), (3.5, 5.5)
FILTER_STEPS, FILTER_GAMMA = 50, 10.0          # γ = 10 at 50 steps, scaled to the step count
MASK_TOKEN_ID = 0                              # the released code masks a token by replacing its id with 0
# The two orders of the projection, named by what each computes (see point 3 above); the first is the default.
RELEASED_ORDER, PAPER_ORDER = "(I-P_C)P_I", "P_I(I-P_C)"
PROJECTIONS = (RELEASED_ORDER, PAPER_ORDER)
# β's tokens: the released code's (attention mask 1: BOS, the prompt, EOS), or the prompt's tokens alone.
BETA_TOKENS = ("BOS+prompt+EOS", "prompt")
FILTERS = ("released", "paper")        # t′ = round(γ σ(2κ(10β − τ))) (the code's), or round(γ σ(β)) (the paper's)
REATTENTION_SCALES = (0.9, 0.2)                # s1 (widest up features), s2 (next width); b1 = b2 = 1
MAX_CUSTOM_CONCEPTS, MAX_CONCEPT_CHARS = 32, 100


@dataclass(frozen=True)
class SafetyOptions:
    categories: tuple[str, ...] = DEFAULT_CATEGORIES
    custom_concepts: tuple[str, ...] = ()
    alpha: float = 0.01
    projection: str = RELEASED_ORDER           # "(I-P_C)P_I" (the released code's) or "P_I(I-P_C)" (the paper's print)
    reattention: bool = False
    concepts_as_negative: bool = False
    beta_tokens: str = BETA_TOKENS[0]          # the filter's β over BOS + the prompt + EOS, or the prompt alone
    filter: str = FILTERS[0]                   # the step filter's formula: the released code's or the paper's
    # Enforced mode (STUDIO_SAFETY=enforced): selection also runs with the default concepts alone, and a token either
    # flags is projected. Concepts of one's own can then add to what is flagged, never take away: selection is
    # relative (a token against the mean of the others), so concepts that cover a prompt's benign words would
    # otherwise dilute the toxic token's score below the margin.
    enforced: bool = False

    def validate(self) -> None:
        unknown = [c for c in self.categories if c not in CONCEPTS]
        if unknown:
            raise InputError(f"Unknown concept categories {unknown}; choose from: {', '.join(CONCEPTS)}.")
        if len(self.custom_concepts) > MAX_CUSTOM_CONCEPTS:
            raise InputError(f"Give at most {MAX_CUSTOM_CONCEPTS} custom concepts, not {len(self.custom_concepts)}.")
        long = [c for c in self.custom_concepts if len(c) > MAX_CONCEPT_CHARS]
        if long:
            raise InputError(f"A custom concept may be at most {MAX_CONCEPT_CHARS} characters: {long[0][:40]!r}…")
        if not self.concepts():
            raise InputError("Choose at least one concept category or write a custom concept to suppress.")
        if isinstance(self.alpha, bool) or not isinstance(self.alpha, (int, float)) or not 0 <= self.alpha <= 1:
            raise InputError(f"α (the selection margin) must be between 0 and 1, not {self.alpha!r}.")
        if self.projection in ("paper", "released"):
            # The studio once called (I-P_C)P_I "paper" and P_I(I-P_C) "released", the other way round: an old name
            # could mean either, so it is refused, saying what each order is now called.
            raise InputError(f"Projection {self.projection!r} is ambiguous: say {RELEASED_ORDER!r} (the released "
                             f"code's order, the default) or {PAPER_ORDER!r} (the order printed in the paper).")
        if self.projection not in PROJECTIONS:
            raise InputError(f"Projection order must be one of {', '.join(PROJECTIONS)}, not {self.projection!r}.")
        if self.beta_tokens not in BETA_TOKENS:
            raise InputError(f"β's tokens must be one of {', '.join(BETA_TOKENS)}, not {self.beta_tokens!r}.")
        if self.filter not in FILTERS:
            raise InputError(f"The step filter must be one of {', '.join(FILTERS)}, not {self.filter!r}.")

    def concepts(self) -> tuple[str, ...]:
        """Every concept to suppress, in order, each once."""
        listed = [c for category in self.categories for c in CONCEPTS.get(category, ())]
        return tuple(dict.fromkeys([*listed, *(c.strip() for c in self.custom_concepts if c.strip())]))

    def filter_constants(self) -> tuple[float, float]:
        only_artists = set(self.categories) == {"artist style"} and not self.custom_concepts
        return FILTER_ARTIST if only_artists else FILTER_NUDITY

    def negative_addition(self) -> str:
        return ", ".join(self.concepts()) if self.concepts_as_negative else ""


def parse_concepts(text: str | None) -> tuple[str, ...]:
    """'Snoopy, Mickey Mouse' -> ('Snoopy', 'Mickey Mouse')."""
    return tuple(part.strip() for part in (text or "").split(",") if part.strip())


# ----------------------------------------------------------------------------- the maths, on plain tensors
def projector(columns: torch.Tensor) -> torch.Tensor:
    """P = A (AᵀA)⁺ Aᵀ for A (D x K), in float64: the orthogonal projector onto span(A)."""
    a = columns.double()
    return a @ torch.linalg.pinv(a.T @ a) @ a.T


# A distance below this (relative to the prompt's own embedding) is zero: the prompt lies in the toxic span.
ZERO_DISTANCE = 1e-9
RATIO_CAP = 1e6        # d_i over others that are all (near) zero: the token is all of the distance; said finitely


def toxicity_ratios(distances: torch.Tensor, scale: float = 1.0) -> torch.Tensor | None:
    """d_i / mean_{j≠i} d_j for every token: token i is toxic iff the ratio is ≥ 1 + α. Never NaN: a token whose
    others are all at distance zero while it is not gets RATIO_CAP (it alone moves the prompt out of the span).
    None when no ratio can be computed: every distance (near) zero, or any not finite. The caller then guards the
    whole prompt (a prompt inside the toxic span is the least safe kind, not a harmless one)."""
    zero = ZERO_DISTANCE * max(scale, 1e-30)
    if not torch.isfinite(distances).all() or bool((distances <= zero).all()):
        return None
    n = distances.numel()
    others = (distances.sum() - distances) / (n - 1)
    return torch.where(others > zero, distances / others.clamp(min=zero), torch.full_like(distances, RATIO_CAP))


def filter_steps(beta: float, kappa: float, tau: float, steps: int, formula: str = "released") -> int:
    """The last guarded step t′, γ = 10 per 50 steps: the released code's round(γ · σ(2κ(10β − τ))), or the paper's
    γ · sigmoid(1 − cos) with β = 1 − cos, rounded."""
    gamma = FILTER_GAMMA * steps / FILTER_STEPS
    x = beta if formula == "paper" else 2.0 * kappa * (10.0 * beta - tau)
    return int(round(gamma / (1.0 + math.exp(-x))))


def token_projection(p_c: torch.Tensor, p_i: torch.Tensor, order: str) -> torch.Tensor:
    """The (D x D) map applied to a selected token's embedding (a column vector): (I − P_C) P_I for "(I-P_C)P_I",
    P_I (I − P_C) for "P_I(I-P_C)"."""
    eye = torch.eye(p_c.shape[0], dtype=p_c.dtype)
    return (eye - p_c) @ p_i if order == RELEASED_ORDER else p_i @ (eye - p_c)


# ----------------------------------------------------------------------------- what the guard decided
@dataclass(frozen=True)
class TokenScore:
    position: int          # in the 77-token window (BOS is 0)
    token: str
    score: float           # d_i / mean_{j≠i} d_j − 1: how much further from the toxic span the prompt moves without it
    flagged: bool
    ends_word: bool = True  # CLIP's BPE marks a word's last piece; a display joins pieces without a space


@dataclass(frozen=True)
class PromptPlan:
    prompt: str
    tokens: tuple[TokenScore, ...]
    projection: torch.Tensor      # (D, D) float64 on CPU
    beta: float
    t_prime: int
    unscored: bool = False        # no ratio could be computed: every token is flagged (guarded in full)
    by_default_concepts: tuple[int, ...] = ()   # enforced mode: positions the default concepts flagged

    @property
    def flagged(self) -> list[int]:
        return [t.position for t in self.tokens if t.flagged]


@dataclass
class GuardPlan:
    options: SafetyOptions
    steps: int
    prompts: dict[str, PromptPlan]
    used_safe: list[int] = field(default_factory=list)   # steps the UNet got the safe embeddings (filled in a call)

    @property
    def active(self) -> bool:
        return any(p.flagged for p in self.prompts.values())

    @property
    def t_prime(self) -> int:
        """The last guarded step: the most cautious of the prompts' (keyframe stages each have one)."""
        return max((p.t_prime for p in self.prompts.values() if p.flagged), default=-1)

    def report(self) -> dict:
        """The `safety` block of a result's info."""
        flagged = [{"token": t.token, "score": round(t.score, 4), "position": t.position, "prompt": p.prompt}
                   for p in self.prompts.values() for t in p.tokens if t.flagged]
        guarded = self.t_prime + 1 if self.active else 0
        return {
            "enabled": True, "concepts": list(self.options.categories),
            "custom_concepts": list(self.options.custom_concepts), "alpha": self.options.alpha,
            "projection": self.options.projection, "reattention": self.options.reattention,
            "concepts_as_negative": self.options.concepts_as_negative,
            "beta_tokens": self.options.beta_tokens, "filter": self.options.filter, "enforced": self.options.enforced,
            "guarded_in_full": [p.prompt for p in self.prompts.values() if p.unscored],
            "flagged_by_default_concepts": {p.prompt: len(p.by_default_concepts) for p in self.prompts.values()
                                            if self.options.enforced},
            "flagged_tokens": flagged, "t_prime": self.t_prime if self.active else None, "steps": self.steps,
            "guarded_steps": guarded, "guarded_steps_text": f"{guarded} of {self.steps} steps",
            "beta": {p.prompt: round(p.beta, 4) for p in self.prompts.values()},
            "tokens": {p.prompt: [{"token": t.token, "score": round(t.score, 4), "flagged": t.flagged,
                                   "ends_word": t.ends_word} for t in p.tokens] for p in self.prompts.values()},
        }


# ----------------------------------------------------------------------------- the guard
class SafetyGuard:
    """Plans and applies SAFREE for a text encoder. One per process; thread-safe (the concept cache is locked)."""

    def __init__(self):
        self._lock = threading.Lock()
        self._subspaces: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()   # text encoder -> {concepts: P_C}

    @torch.inference_mode()
    def _encode(self, text_encoder, ids: torch.Tensor, states_of: Sequence[int] = (), chunk: int = 256):
        """(pooled embeddings of every row, token states of the rows in `states_of`), float64 on the CPU."""
        pooled, states = [], {}
        for start in range(0, len(ids), chunk):
            out = text_encoder(ids[start:start + chunk].to(text_encoder.device))
            pooled.append(out.pooler_output.double().cpu())
            for row in states_of:
                if start <= row < start + chunk:
                    states[row] = out.last_hidden_state[row - start].double().cpu()
        return torch.cat(pooled), [states[row] for row in states_of]

    def _ids(self, tokenizer, texts: Sequence[str]) -> torch.Tensor:
        return tokenizer(list(texts), padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                         return_tensors="pt").input_ids

    def toxic_subspace(self, tokenizer, text_encoder, concepts: tuple[str, ...]) -> torch.Tensor:
        """P_C for the concepts (D x D float64), cached per text encoder and concept list. Refuses a list whose
        span is the whole embedding space: every prompt would then sit in it and every token look toxic."""
        with self._lock:
            cached = self._subspaces.setdefault(text_encoder, {})
            if concepts in cached:
                return cached[concepts]
        pooled, _ = self._encode(text_encoder, self._ids(tokenizer, concepts))
        width, rank = pooled.shape[1], int(torch.linalg.matrix_rank(pooled))
        if rank >= width:
            raise InputError(
                f"The {len(concepts)} concepts to suppress span the whole {width}-dimensional text-embedding space "
                f"(rank {rank}), so every prompt would look toxic. Suppress fewer concepts."
            )
        p_c = projector(pooled.T)
        with self._lock:
            self._subspaces.setdefault(text_encoder, {})[concepts] = p_c
        return p_c

    def plan(self, tokenizer, text_encoder, prompts: Sequence[str], options: SafetyOptions, steps: int) -> GuardPlan:
        """Score every token of every prompt (each prompt as the model reads it) and decide what to project."""
        options.validate()
        p_c = self.toxic_subspace(tokenizer, text_encoder, options.concepts())
        kappa, tau = options.filter_constants()
        texts = list(dict.fromkeys(prompts))
        ids = self._ids(tokenizer, texts)
        eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
        # Per prompt: its tokens (without BOS and EOS) and one row per token with that token masked, plus the
        # prompt itself. CLIP's text attention is causal, so nothing after EOS reaches the pooled output (read at
        # EOS) or the tokens' states: rows stop at EOS, and all prompts' rows run as one padded batch.
        spans, rows, eos_at = [], [], []
        for row_ids in ids:
            end = int((row_ids == eos).nonzero()[0]) if (row_ids == eos).any() else len(row_ids) - 1
            positions = list(range(1, end))
            masked = row_ids[:end + 1].repeat(len(positions) + 1, 1)
            for row, position in enumerate(positions):
                masked[row, position] = MASK_TOKEN_ID
            spans.append(positions)
            rows.append(masked)
            eos_at.append(end)
        length = max(r.shape[1] for r in rows)
        batch = torch.cat([torch.nn.functional.pad(r, (0, length - r.shape[1]), value=pad) for r in rows])
        ends = torch.tensor([len(positions) + 1 for positions in spans]).cumsum(0).tolist()
        pooled, states = self._encode(text_encoder, batch, states_of=[end - 1 for end in ends])
        plans = {}
        for text, row_ids, positions, end, state, eos_position in zip(texts, ids, spans, ends, states, eos_at,
                                                                      strict=True):
            plans[text] = self._plan_prompt(tokenizer, text, row_ids, positions, eos_position,
                                            pooled[end - len(positions) - 1:end], state, p_c, options, kappa, tau,
                                            steps)
        defaults = SafetyOptions()
        same_as_defaults = (options.concepts() == defaults.concepts() and options.alpha <= defaults.alpha
                            and (options.beta_tokens, options.filter) == (defaults.beta_tokens, defaults.filter))
        if options.enforced and not same_as_defaults:
            # (The default concepts at a margin no larger, with the default filter, flag a superset of the defaults'
            # own for as many steps: nothing to add.)
            plans = self._with_default_concepts(tokenizer, text_encoder, texts, plans, options, steps)
        return GuardPlan(options, steps, plans)

    def _with_default_concepts(self, tokenizer, text_encoder, texts, plans, options, steps) -> dict[str, PromptPlan]:
        """Enforced mode: the plan of the default guard (its concepts, margin, β tokens and filter) beside the
        requested one; a token either flags is projected (with the requested, larger, toxic span), and each prompt
        keeps the later of the two t′, so no option can shorten the guarded steps either."""
        floor = self.plan(tokenizer, text_encoder, texts, SafetyOptions(), steps)
        merged = {}
        for text, plan in plans.items():
            default = floor.prompts[text]
            by_default = {t.position for t in default.tokens if t.flagged}
            tokens = tuple(TokenScore(t.position, t.token, t.score, t.flagged or t.position in by_default,
                                      t.ends_word) for t in plan.tokens)
            t_prime = max(plan.t_prime, default.t_prime) if by_default else plan.t_prime
            merged[text] = PromptPlan(text, tokens, plan.projection, plan.beta, t_prime,
                                      plan.unscored or default.unscored, tuple(sorted(by_default)))
        return merged

    @staticmethod
    def _plan_prompt(tokenizer, prompt, ids, positions, eos_position, pooled, hidden, p_c, options, kappa, tau,
                     steps) -> PromptPlan:
        """One prompt's scores and projection from its masked rows' pooled embeddings (the last row: the prompt
        itself) and the prompt's own token states (BOS at 0, the prompt's tokens at `positions`, EOS after)."""
        if not positions:
            return PromptPlan(prompt, (), torch.eye(p_c.shape[0], dtype=torch.float64), 0.0, -1)
        without = pooled[:-1]                                 # p_\i, one row per token
        outside = torch.eye(p_c.shape[0], dtype=torch.float64) - p_c
        distances = (without @ outside.T).norm(dim=1)
        scale = float(pooled[-1].norm())
        if len(positions) > 1:
            ratios = toxicity_ratios(distances, scale)
        else:
            # One token: no other token to compare with. The studio's own rule compares it with the prompt as
            # written (masking a toxic token moves the prompt away from the toxic span). The released code projects
            # the lone token: its mean over no other token is NaN, so its "safe" comparison (kept iff d_i <
            # (1 + α) · mean) is False.
            written = (pooled[-1] @ outside.T).norm()
            ratios = distances / written if float(written) > ZERO_DISTANCE * max(scale, 1e-30) else None
        unscored = ratios is None
        if unscored:      # inside the toxic span, or not computable: every token projected, its score said as 0
            scores, flags = [0.0] * len(positions), [True] * len(positions)
        else:
            scores, flags = [float(r) - 1.0 for r in ratios], [bool(r >= 1.0 + options.alpha) for r in ratios]
        p_i = projector(without.T)
        projection = token_projection(p_c, p_i, options.projection)
        # β's tokens: the released code averages over its attention mask (BOS, the prompt's tokens, EOS).
        rows = [0, *positions, eos_position] if options.beta_tokens == BETA_TOKENS[0] else positions
        e = hidden[rows]
        cosine = torch.nn.functional.cosine_similarity(e @ projection.T, e, dim=1)
        beta = float(1.0 - cosine.mean())
        words = tokenizer.convert_ids_to_tokens(ids[positions].tolist())
        tokens = tuple(
            TokenScore(position, word.replace("</w>", ""), score, flag, word.endswith("</w>"))
            for position, word, score, flag in zip(positions, words, scores, flags, strict=True)
        )
        return PromptPlan(prompt, tokens, projection, beta, filter_steps(beta, kappa, tau, steps, options.filter),
                          unscored)

    # ------------------------------------------------------------------------- inside the sampler
    @contextmanager
    def applied(self, pipe, plan: GuardPlan | None) -> Iterator[None]:
        """Install the guard on a diffusers pipeline (made for this call) and its UNet for one call."""
        if plan is None or not plan.active:       # nothing flagged: the unguarded code, untouched
            yield
            return
        unet = pipe.unet
        original_encode = pipe.encode_prompt
        width = unet.config.cross_attention_dim
        plan.used_safe.clear()

        def encode_prompt(prompt, *args, **kwargs):
            cond, negative = original_encode(prompt, *args, **kwargs)
            texts = [prompt] if isinstance(prompt, str) else list(prompt)
            per_prompt = cond.shape[0] // max(len(texts), 1)
            safe = cond.clone()
            for number, text in enumerate(texts):
                prompt_plan = plan.prompts.get(text)
                if prompt_plan is None or not prompt_plan.flagged:
                    continue
                rows, columns = slice(number * per_prompt, (number + 1) * per_prompt), prompt_plan.flagged
                projection = prompt_plan.projection.to(cond.device)
                safe[rows, columns] = (cond[rows, columns].double() @ projection.T).to(cond.dtype)
            doubled_negative = None if negative is None else torch.cat([negative, negative], dim=-1)
            return torch.cat([cond, safe], dim=-1), doubled_negative

        step_of: dict[int, int] = {}
        reattention = (_Reattention(REATTENTION_SCALES, unet.config.block_out_channels)
                       if plan.options.reattention else None)

        def before_unet(module, args, kwargs):
            hidden = kwargs.get("encoder_hidden_states")
            if hidden is None or hidden.shape[-1] != 2 * width:
                return None                                   # not a call the wrapped encoding fed
            if not step_of:
                step_of.update({int(t): i for i, t in enumerate(pipe.scheduler.timesteps)})
            timestep = args[1] if len(args) > 1 else kwargs["timestep"]
            step = step_of.get(int(timestep), len(step_of))
            guarded = plan.active and step <= plan.t_prime
            original, safe = hidden[..., :width], hidden[..., width:]
            chosen = safe if guarded else original
            if guarded and step not in plan.used_safe:
                plan.used_safe.append(step)
            if reattention is None or not guarded:
                if reattention is not None:
                    reattention.branches = 0
                kwargs["encoder_hidden_states"] = chosen.contiguous()
                return args, kwargs
            # A third branch, the unguarded prompt, as the reference the safe branch is compared with.
            sample = args[0]
            branches = sample.shape[0]
            per_branch = hidden.shape[0] // branches
            args = (torch.cat([sample, sample[-1:]]), *args[1:])
            kwargs["encoder_hidden_states"] = torch.cat([chosen, original[-per_branch:]]).contiguous()
            added = kwargs.get("added_cond_kwargs") or {}
            if added.get("image_embeds") is not None:
                added = {**added, "image_embeds": [e if e.shape[0] != branches else torch.cat([e, e[-1:]])
                                                   for e in added["image_embeds"]]}
                kwargs["added_cond_kwargs"] = added
            reattention.branches = branches + 1
            return args, kwargs

        def after_unet(module, args, kwargs, output):
            if reattention is None or not reattention.branches:
                return None
            keep = reattention.branches - 1
            reattention.branches = 0
            if isinstance(output, tuple):
                return (output[0][:keep], *output[1:])
            output.sample = output.sample[:keep]
            return output

        pipe.encode_prompt = encode_prompt
        handles = [unet.register_forward_pre_hook(before_unet, with_kwargs=True)]
        if reattention is not None:
            _install_freeu_dispatcher()
            handles.append(unet.register_forward_hook(after_unet, with_kwargs=True))
            marker = reattention.marker
            unet.enable_freeu(s1=marker, s2=marker, b1=marker, b2=marker)
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()
            if reattention is not None:
                unet.disable_freeu()
            del pipe.encode_prompt


# ----------------------------------------------------------------------------- latent re-attention
def reattend(skip: torch.Tensor, branches: int, scale: float) -> torch.Tensor:
    """SAFREE's adaptive re-attention on one skip feature of a (branches · frames)-row batch whose last two
    branches are (safe, unguarded): in the safe branch's central 2×2 low-frequency window (after fftshift), the
    Fourier coefficients whose magnitude exceeds the unguarded branch's are multiplied by `scale`; every other
    coefficient, and every other branch, is left as it is. Frames folded into the batch stay in their branch:
    the batch is split into `branches` equal chunks, never indexed by fixed rows."""
    chunks = list(skip.chunk(branches))
    safe, reference = chunks[-2], chunks[-1]
    height, width = safe.shape[-2:]
    spectrum = torch.fft.fftshift(torch.fft.fft2(safe.float()), dim=(-2, -1))
    reference_spectrum = torch.fft.fftshift(torch.fft.fft2(reference.float()), dim=(-2, -1))
    window = torch.zeros(height, width, dtype=torch.bool, device=skip.device)
    window[max(height // 2 - 1, 0):height // 2 + 1, max(width // 2 - 1, 0):width // 2 + 1] = True
    # With each coefficient's conjugate partner (-f): the feature stays real and the chosen coefficients are
    # scaled exactly. FreeU's one-sided window, once the imaginary part is dropped, scales them by (1 + s) / 2.
    window |= conjugate_partners(window)
    exceeds = window & (spectrum.abs() > reference_spectrum.abs())
    if not exceeds.any():
        return skip
    spectrum = torch.where(exceeds, spectrum * scale, spectrum)
    chunks[-2] = torch.fft.ifft2(torch.fft.ifftshift(spectrum, dim=(-2, -1))).real.to(skip.dtype)
    return torch.cat(chunks)


def conjugate_partners(mask: torch.Tensor) -> torch.Tensor:
    """For a mask over an fftshift-ed spectrum, the mask of the coefficients at the negated frequencies."""
    height, width = mask.shape
    rows = (torch.arange(height) - height // 2).neg() % height
    columns = (torch.arange(width) - width // 2).neg() % width
    # shifted index i holds frequency i - n//2; frequency -f sits at shifted index (-f) + n//2 (mod n)
    rows, columns = (rows + height // 2) % height, (columns + width // 2) % width
    return mask[rows][:, columns]


class _Marker:
    """A truthy stand-in for FreeU's four numbers: diffusers' up blocks pass it on to `apply_freeu`, where it
    says whose re-attention this is."""

    def __init__(self, owner: _Reattention):
        self.owner = owner

    def __bool__(self) -> bool:
        return True


class _Reattention:
    """Where the filter runs and by how much. FreeU's own code picks its stage by the backbone feature's width
    (`hidden_states.shape[1] == 1280` → s1, `== 640` → s2 on SD1.5); diffusers' `apply_freeu` picks by
    `resolution_idx in (0, 1)` instead, and SD1.5's first two up stages are both 1280 wide, so s2 would land on
    a 1280 stage. Widths are read from the UNet: the widest gets s1, the next distinct width s2, others none."""

    def __init__(self, scales: tuple[float, float], block_out_channels: Sequence[int]):
        widths = sorted(set(block_out_channels), reverse=True)
        self.scale_by_width = dict(zip(widths, scales, strict=False))   # one width (a toy UNet): s1 only
        self.branches = 0
        self.marker = _Marker(self)


_STOCK_FREEU: dict[str, object] = {}


def _freeu_dispatcher(resolution_idx, hidden_states, res_hidden_states, **freeu_kwargs):
    marker = freeu_kwargs.get("s1")
    if isinstance(marker, _Marker):
        owner = marker.owner
        scale = owner.scale_by_width.get(hidden_states.shape[1])
        if owner.branches and scale is not None:
            res_hidden_states = reattend(res_hidden_states, owner.branches, scale)
        return hidden_states, res_hidden_states
    return _STOCK_FREEU["apply_freeu"](resolution_idx, hidden_states, res_hidden_states, **freeu_kwargs)


def _install_freeu_dispatcher() -> None:
    """diffusers' up blocks call the module-level `apply_freeu` while FreeU's four numbers are truthy; one
    dispatcher runs the re-attention for our markers and the stock FreeU for anything else, in every module
    that imported it (motion UNets and 2-D UNets)."""
    from diffusers.models.unets import unet_2d_blocks, unet_motion_model
    from diffusers.utils import torch_utils

    _STOCK_FREEU.setdefault("apply_freeu", torch_utils.apply_freeu)
    for module in (unet_motion_model, unet_2d_blocks):
        if getattr(module, "apply_freeu", None) is not _freeu_dispatcher:
            module.apply_freeu = _freeu_dispatcher


def with_concepts(negative_prompt: str | None, options: SafetyOptions | None) -> str:
    """The negative prompt with the concept list appended when `concepts_as_negative` is on (as the released
    code passes it), else as it is."""
    negative = (negative_prompt or "").strip()
    addition = options.negative_addition() if options is not None else ""
    return ", ".join(part for part in (negative, addition) if part)
