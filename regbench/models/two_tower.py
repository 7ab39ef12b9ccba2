"""Two-tower recommender: a user tower and an item tower, each id embedding + side features + an MLP,
scored by dot product or temperature-scaled cosine. `mf` (BPR matrix factorisation) is the same
module with no features and no MLP: the towers are then just the id embeddings.

Layers for the regularizer spec, the same index in both towers: 1 = the concatenated input
features (embeddings), 2..L+1 = the output of each hidden MLP layer. BN and dropout go on the hidden
layers by default; `regularizer.dropout.layers=all` adds dropout on the embeddings too.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from omegaconf import DictConfig
from torch import Tensor, nn

from regbench import checks
from regbench.errors import ConfigError
from regbench.models.common import ACTIVATIONS, INITS, init_weights, make_activation
from regbench.regimen import NO_PLACEMENT, Placement, Regimen


@dataclass
class TowerInputs:
    """What one side knows about its entities, indexed by entity: categorical codes and multi-hot sets."""

    n_ids: int
    categorical: list[int]   # number of codes (0 = unknown) of each categorical feature
    multi_hot: int = 0       # width of a multi-hot feature (genres), 0 = none


class Tower(nn.Module):
    def __init__(self, inputs: TowerInputs, *, id_dim: int, feature_dim: int, hidden: list[int], out_dim: int,
                 use_features: bool, placement: Placement, activation: str) -> None:
        super().__init__()
        self.ids = nn.Embedding(inputs.n_ids, id_dim)
        nn.init.normal_(self.ids.weight, std=0.1)
        cats = inputs.categorical if use_features else []
        self.categorical = nn.ModuleList(nn.Embedding(n + 1, feature_dim) for n in cats)
        self.multi_hot = nn.Linear(inputs.multi_hot, feature_dim, bias=False) \
            if use_features and inputs.multi_hot else None
        width = id_dim + feature_dim * (len(cats) + (self.multi_hot is not None))
        self.input_layer = self._regularizer(1, width, placement)
        blocks = []
        for layer, size in enumerate(hidden, start=2):
            blocks.append(nn.Sequential(nn.Linear(width, size), *self._regularizer(layer, size, placement, activation)))
            width = size
        self.hidden = nn.ModuleList(blocks)
        self.project = nn.Linear(width, out_dim) if (hidden or width != out_dim) else None

    @staticmethod
    def _regularizer(layer: int, size: int, placement: Placement, activation: str | None = None) -> nn.Sequential:
        parts: list[nn.Module] = []
        if placement.has_norm(layer):
            parts.append(placement.norm(layer, size, dims=1))
        if activation is not None:
            parts.append(make_activation(activation))
        if placement.has_dropout(layer):
            parts.append(placement.dropout(layer))
        return nn.Sequential(*parts)

    def forward(self, ids: Tensor, categorical: Tensor | None, multi_hot: Tensor | None) -> Tensor:
        parts = [self.ids(ids)]
        for i, emb in enumerate(self.categorical):
            parts.append(emb(categorical[:, i]))
        if self.multi_hot is not None:
            parts.append(self.multi_hot(multi_hot))
        h = self.input_layer(torch.cat(parts, dim=1) if len(parts) > 1 else parts[0])
        for block in self.hidden:
            h = block(h)
        return self.project(h) if self.project is not None else h


class TwoTower(nn.Module):
    def __init__(self, users: TowerInputs, items: TowerInputs, *, id_dim: int = 64, feature_dim: int = 16,
                 hidden: list[int] | None = None, out_dim: int = 64, use_features: bool = True,
                 score: str = "dot", temperature: float = 0.1, placement: Placement | None = None,
                 activation: str = "relu") -> None:
        super().__init__()
        placement = placement or NO_PLACEMENT
        hidden = list(hidden or [])
        kw = dict(id_dim=id_dim, feature_dim=feature_dim, hidden=hidden, out_dim=out_dim, use_features=use_features,
                  placement=placement, activation=activation)
        self.user_tower = Tower(users, **kw)
        self.item_tower = Tower(items, **kw)
        self.score_kind, self.temperature = score, temperature
        # Side features live on the model as buffers so a tower can be run for any id.
        self.register_buffer("user_cats", torch.zeros(users.n_ids, len(users.categorical), dtype=torch.long))
        self.register_buffer("user_multi", torch.zeros(users.n_ids, users.multi_hot))
        self.register_buffer("item_cats", torch.zeros(items.n_ids, len(items.categorical), dtype=torch.long))
        self.register_buffer("item_multi", torch.zeros(items.n_ids, items.multi_hot))

    def set_features(self, user_cats: Tensor, user_multi: Tensor, item_cats: Tensor, item_multi: Tensor) -> None:
        for name, value in (("user_cats", user_cats), ("user_multi", user_multi), ("item_cats", item_cats),
                            ("item_multi", item_multi)):
            getattr(self, name).copy_(value)

    def _normalise(self, v: Tensor) -> Tensor:
        return nn.functional.normalize(v, dim=-1) if self.score_kind == "cosine" else v

    def user_vectors(self, users: Tensor) -> Tensor:
        return self._normalise(self.user_tower(users, self.user_cats[users], self.user_multi[users]))

    def item_vectors(self, items: Tensor | None = None) -> Tensor:
        if items is None:
            items = torch.arange(self.item_cats.shape[0], device=self.item_cats.device)
        return self._normalise(self.item_tower(items, self.item_cats[items], self.item_multi[items]))

    def _scaled(self, s: Tensor) -> Tensor:
        return s / self.temperature if self.score_kind == "cosine" else s

    def logits(self, u: Tensor, v: Tensor) -> Tensor:
        """Scores of user vectors (B, D) against item vectors (N, D): (B, N)."""
        return self._scaled(u @ v.T)

    def pair_scores(self, u: Tensor, v: Tensor) -> Tensor:
        """Scores of user vectors against item vectors paired up by broadcasting: (..., D) -> (...)."""
        return self._scaled((u * v).sum(-1))

    def forward(self, users: Tensor, items: Tensor) -> Tensor:
        """Score of each (user, item) pair."""
        return self.pair_scores(self.user_vectors(users), self.item_vectors(items))


def layer_count(hidden: list[int]) -> int:
    """The numbered layers of each tower: the input embeddings, then one per MLP layer."""
    return len(hidden) + 1


def build(*, regimen: Regimen, users: TowerInputs, items: TowerInputs, item_counts: Tensor | None = None,
          id_dim: int = 64, feature_dim: int = 16, features: bool = True, hidden: list[int] | None = None,
          out_dim: int = 64, activation: str = "relu", score: str = "dot", temperature: float = 0.1,
          init: str = "default") -> TwoTower:
    """`item_counts` (training interactions per item) is the popularity baseline's input; towers learn."""
    hidden = list(hidden or [])
    n_layers = layer_count(hidden)
    # Default placement: the MLP layers; without an MLP (mf) the embeddings are all there is.
    default = tuple(range(2, n_layers + 1)) or (1,)
    placement = regimen.place(n_layers, default_norm=default, default_dropout=default)
    model = TwoTower(users, items, id_dim=id_dim, feature_dim=feature_dim, hidden=hidden, out_dim=out_dim,
                     use_features=features, score=score, temperature=temperature, placement=placement,
                     activation=activation)
    init_weights(model, init, activation)
    return model


# What this model supports (regbench.models.Capabilities): the tasks whose Task.inputs are "interactions",
# and regularizer.stochastic_depth not (no residual blocks).
INPUTS = "interactions"
RESIDUAL_BLOCKS = False


def validate_config(cfg: DictConfig, regimen: Regimen) -> None:
    checks.choice(cfg, "model.init", INITS)
    checks.choice(cfg, "model.activation", ACTIVATIONS)
    checks.choice(cfg, "model.score", ("dot", "cosine"))
    checks.choice(cfg, "model.loss", ("bpr", "softmax"))
    checks.choice(cfg, "model.negatives", ("uniform", "in_batch"))
    checks.boolean(cfg, "model.features")
    for key in ("id_dim", "feature_dim", "out_dim", "num_negatives"):
        checks.number(cfg, f"model.{key}", low=1, integer=True)
    checks.number(cfg, "model.temperature", low=0, low_open=True)
    hidden = cfg.model.hidden
    if not all(isinstance(h, int) and h > 0 for h in hidden):
        raise ConfigError(f"model.hidden={list(hidden)!r} is invalid: a list of positive layer widths, e.g. [128]")
    if cfg.model.loss == "bpr" and cfg.model.negatives == "in_batch":
        raise ConfigError("model.loss=bpr samples its negatives uniformly: use model.negatives=uniform "
                          "(in_batch negatives go with model.loss=softmax)")
    n_layers = layer_count(list(hidden))
    regimen.check_layers(n_layers, f"{cfg.model.name}: 1 = input embeddings, 2..{n_layers} = MLP layers")
