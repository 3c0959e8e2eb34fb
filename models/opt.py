"""OPT, the paper's family, with HF parameter names (``model.decoder.*``)."""

from __future__ import annotations

import torch.nn as nn
import torch.nn.functional as F

from skipdecode.models.attention import attend
from skipdecode.models.base import SkipLM
from skipdecode.models.config import OPTConfig

ACTIVATIONS = {"relu": F.relu, "gelu": F.gelu, "gelu_new": lambda x: F.gelu(x, approximate="tanh")}


class OPTAttention(nn.Module):
    def __init__(self, c: OPTConfig):
        super().__init__()
        self.num_heads, self.head_dim = c.num_attention_heads, c.head_dim
        H = c.hidden_size
        self.q_proj = nn.Linear(H, H, bias=c.enable_bias)
        self.k_proj = nn.Linear(H, H, bias=c.enable_bias)
        self.v_proj = nn.Linear(H, H, bias=c.enable_bias)
        self.out_proj = nn.Linear(H, H, bias=c.enable_bias)
        self.scale = self.head_dim ** -0.5

    def forward(self, x, rope, mask, kv_fn):
        B, S, _ = x.shape
        split = lambda t: t.view(B, S, self.num_heads, self.head_dim).transpose(1, 2)  # noqa: E731
        q, k, v = split(self.q_proj(x)), split(self.k_proj(x)), split(self.v_proj(x))  # (B, H, S, D)
        k_all, v_all = kv_fn(k, v)  # (B, H, T, D)
        return self.out_proj(attend(q, k_all, v_all, mask, self.scale))


class OPTDecoderLayer(nn.Module):
    def __init__(self, c: OPTConfig):
        super().__init__()
        self.pre_ln = c.do_layer_norm_before
        self.self_attn = OPTAttention(c)
        affine = c.layer_norm_elementwise_affine
        self.self_attn_layer_norm = nn.LayerNorm(c.hidden_size, elementwise_affine=affine)
        self.fc1 = nn.Linear(c.hidden_size, c.ffn_dim, bias=c.enable_bias)
        self.fc2 = nn.Linear(c.ffn_dim, c.hidden_size, bias=c.enable_bias)
        self.final_layer_norm = nn.LayerNorm(c.hidden_size, elementwise_affine=affine)
        if c.activation_function not in ACTIVATIONS:
            raise ValueError(f"unsupported activation {c.activation_function!r} (supported: {sorted(ACTIVATIONS)})")
        self.act = ACTIVATIONS[c.activation_function]

    def forward(self, x, rope, mask, kv_fn):  # x: (B, S, hidden)
        h = self.self_attn_layer_norm(x) if self.pre_ln else x
        x = x + self.self_attn(h, rope, mask, kv_fn)
        if not self.pre_ln:
            x = self.self_attn_layer_norm(x)
        h = self.final_layer_norm(x) if self.pre_ln else x
        x = x + self.fc2(self.act(self.fc1(h)))
        if not self.pre_ln:
            x = self.final_layer_norm(x)
        return x


class OPTDecoder(nn.Module):
    def __init__(self, c: OPTConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(c.vocab_size, c.word_embed_proj_dim)
        self.embed_positions = nn.Embedding(c.max_position_embeddings + c.position_offset, c.hidden_size)
        project = c.word_embed_proj_dim != c.hidden_size
        self.project_in = nn.Linear(c.word_embed_proj_dim, c.hidden_size, bias=False) if project else None
        self.project_out = nn.Linear(c.hidden_size, c.word_embed_proj_dim, bias=False) if project else None
        has_final = c.do_layer_norm_before and not c.remove_final_layer_norm
        self.final_layer_norm = (nn.LayerNorm(c.hidden_size, elementwise_affine=c.layer_norm_elementwise_affine)
                                 if has_final else None)
        self.layers = nn.ModuleList(OPTDecoderLayer(c) for _ in range(c.num_hidden_layers))


class OPTModel(nn.Module):
    def __init__(self, c: OPTConfig):
        super().__init__()
        self.decoder = OPTDecoder(c)


class OPTForCausalLM(SkipLM):
    def __init__(self, config: OPTConfig):
        super().__init__()
        self.config = config
        self.model = OPTModel(config)
        self.lm_head = nn.Linear(config.word_embed_proj_dim, config.vocab_size, bias=False)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.model.decoder.embed_tokens.weight

    @property
    def decoder_layers(self) -> nn.ModuleList:
        return self.model.decoder.layers

    def embed(self, input_ids, positions):
        d = self.model.decoder
        x = d.embed_tokens(input_ids)  # (B, S, word_embed_proj_dim)
        if d.project_in is not None:
            x = d.project_in(x)
        return x + d.embed_positions(positions + self.config.position_offset)  # (B, S, hidden)

    def head(self, hidden):
        d = self.model.decoder
        if d.final_layer_norm is not None:
            hidden = d.final_layer_norm(hidden)
        if d.project_out is not None:
            hidden = d.project_out(hidden)
        return self.lm_head(hidden)  # (B, S, V)
