"""InternVLChatModel: InternViT -> pixel shuffle -> MLP projector (mlp1) -> LLM, with chat() and batch_chat().

Written from the published InternVL2 architecture with the official public surface, so that
transformers (trust_remote_code), XTuner (which calls vision_model, language_model, mlp1,
extract_feature and img_context_token_id directly) and LMDeploy treat it like the real model.
"""
from typing import List, Optional, Tuple, Union

import torch
from torch import nn
from torch.nn import CrossEntropyLoss
from transformers.modeling_outputs import CausalLMOutputWithPast
from transformers.modeling_utils import PreTrainedModel

from .configuration_internvl_chat import InternVLChatConfig
from .conversation import get_conv_template
from .modeling_intern_vit import InternVisionModel, has_flash_attn
from .modeling_internlm2 import InternLM2ForCausalLM

IMG_START_TOKEN = "<img>"
IMG_END_TOKEN = "</img>"
IMG_CONTEXT_TOKEN = "<IMG_CONTEXT>"


def pixel_shuffle(x: torch.Tensor, scale_factor: float = 0.5, ps_version: str = "v2") -> torch.Tensor:
    """Trade space for channels: [N, h, w, C] -> [N, h*s, w*s, C/(s*s)] (s=0.5: 32x32xC -> 16x16x4C).

    Each output position gathers a 2x2 block of neighbouring patches into one longer vector,
    so the LLM sees 4x fewer image tokens. 'v1' leaves the two spatial axes swapped (a quirk of
    the first release); 'v2' transposes them back, so output[i, j] comes from input[2i:2i+2, 2j:2j+2].
    """
    n, h, w, c = x.shape
    # fold pairs of columns into channels: [N, h, w*s, C/s]
    x = x.reshape(n, h, int(w * scale_factor), int(c / scale_factor))
    # swap the spatial axes, then fold pairs of rows into channels: [N, w*s, h*s, C/(s*s)]
    x = x.permute(0, 2, 1, 3).contiguous()
    x = x.reshape(n, int(w * scale_factor), int(h * scale_factor), int(c / (scale_factor * scale_factor)))
    if ps_version != "v1":
        x = x.permute(0, 2, 1, 3).contiguous()  # back to [N, h*s, w*s, C/(s*s)]
    return x


def _build_llm(llm_config):
    """The language model named by llm_config.architectures[0]: InternLM2ForCausalLM from the file next to this
    one (InternVL2-2B/8B), else the class of that name built into transformers (Phi3ForCausalLM for InternVL2-4B)."""
    arch = (getattr(llm_config, "architectures", None) or ["InternLM2ForCausalLM"])[0]
    if arch == "InternLM2ForCausalLM":
        return InternLM2ForCausalLM(llm_config)
    import transformers
    cls = getattr(transformers, arch, None)
    if cls is None:
        raise ValueError(f"llm_config.architectures[0] = {arch!r} is not a transformers class; "
                         "the course's remote code supports LLMs built into transformers (e.g. Phi3ForCausalLM)")
    return cls(llm_config)


def _usable_attn(requested: Optional[str]) -> str:
    """flash_attention_2 only when flash_attn imports (XTuner asks for it unconditionally); else sdpa."""
    if requested in ("flash_attention_2", "flash_attention_3") and not has_flash_attn:
        return "sdpa"
    return requested or "sdpa"


class InternVLChatModel(PreTrainedModel):
    """InternVL2 chat model: images become num_image_token tokens per 448x448 tile, spliced into the LLM's input."""

    config_class = InternVLChatConfig
    main_input_name = "pixel_values"
    base_model_prefix = "language_model"
    _no_split_modules = ["InternVisionEncoderLayer", "InternLM2DecoderLayer", "Phi3DecoderLayer", "LlamaDecoderLayer", "Qwen2DecoderLayer"]
    _supports_flash_attn_2 = True
    _supports_flash_attn = True
    _supports_sdpa = True
    supports_gradient_checkpointing = True

    def __init__(self, config: InternVLChatConfig, vision_model=None, language_model=None, use_flash_attn=True):
        super().__init__(config)
        image_size = config.force_image_size or config.vision_config.image_size
        patch_size = config.vision_config.patch_size
        self.patch_size = patch_size
        self.select_layer = config.select_layer
        self.template = config.template
        self.num_image_token = int((image_size // patch_size) ** 2 * (config.downsample_ratio ** 2))
        self.downsample_ratio = config.downsample_ratio
        self.ps_version = config.ps_version

        use_flash_attn = use_flash_attn and has_flash_attn
        config.vision_config.use_flash_attn = use_flash_attn
        llm_attn = _usable_attn(getattr(config.llm_config, "_attn_implementation", None))
        config.llm_config._attn_implementation = llm_attn
        if hasattr(config.llm_config, "_attn_implementation_internal"):
            config.llm_config._attn_implementation_internal = llm_attn
        if getattr(config.llm_config, "model_type", None) == "internlm2":  # InternLM2 reads its public field
            config.llm_config.attn_implementation = _usable_attn(getattr(config.llm_config, "attn_implementation", None))

        self.vision_model = vision_model if vision_model is not None else InternVisionModel(config.vision_config)
        self.language_model = language_model if language_model is not None else _build_llm(config.llm_config)

        vit_hidden_size = config.vision_config.hidden_size
        llm_hidden_size = config.llm_config.hidden_size
        merged = vit_hidden_size * int(1 / self.downsample_ratio) ** 2
        self.mlp1 = nn.Sequential(
            nn.LayerNorm(merged),
            nn.Linear(merged, llm_hidden_size),
            nn.GELU(),
            nn.Linear(llm_hidden_size, llm_hidden_size),
        )
        self.img_context_token_id = None
        self.conv_template = get_conv_template(self.template or "internlm2-chat")
        self.system_message = self.conv_template.system_message
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        """Initialise the projector (the ViT and the LLM initialise their own modules)."""
        if isinstance(module, nn.Linear):
            module.weight.data.normal_(mean=0.0, std=0.02)
            if module.bias is not None:
                module.bias.data.zero_()
        elif isinstance(module, nn.LayerNorm):
            module.weight.data.fill_(1.0)
            module.bias.data.zero_()

    # -- the pieces XTuner and LMDeploy call directly -------------------------------------------------
    def pixel_shuffle(self, x: torch.Tensor, scale_factor: float = 0.5) -> torch.Tensor:
        """Module-level pixel_shuffle with this model's ps_version."""
        return pixel_shuffle(x, scale_factor=scale_factor, ps_version=self.ps_version)

    def extract_feature(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Tiles [N, 3, 448, 448] -> LLM-ready image tokens [N, num_image_token, llm_hidden]."""
        if self.select_layer == -1:
            vit_embeds = self.vision_model(pixel_values=pixel_values, output_hidden_states=False,
                                           return_dict=True).last_hidden_state
        else:
            vit_embeds = self.vision_model(pixel_values=pixel_values, output_hidden_states=True,
                                           return_dict=True).hidden_states[self.select_layer]
        vit_embeds = vit_embeds[:, 1:, :]  # drop [CLS]
        h = w = int(vit_embeds.shape[1] ** 0.5)
        vit_embeds = vit_embeds.reshape(vit_embeds.shape[0], h, w, -1)
        vit_embeds = self.pixel_shuffle(vit_embeds, scale_factor=self.downsample_ratio)
        vit_embeds = vit_embeds.reshape(vit_embeds.shape[0], -1, vit_embeds.shape[-1])
        return self.mlp1(vit_embeds)

    def get_input_embeddings(self) -> nn.Module:
        """The LLM's token embedding."""
        return self.language_model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.language_model.set_input_embeddings(value)

    def get_output_embeddings(self):
        """None: the LLM keeps its own lm_head (never tied across the wrapper)."""
        return None

    def _merge_image_tokens(self, input_ids: torch.Tensor, vit_embeds: torch.Tensor) -> torch.Tensor:
        """Token embeddings with every <IMG_CONTEXT> position replaced, in order, by the image tokens."""
        if self.img_context_token_id is None:
            raise ValueError("img_context_token_id is not set: set model.img_context_token_id = "
                             "tokenizer.convert_tokens_to_ids('<IMG_CONTEXT>') (chat() does it for you)")
        input_embeds = self.language_model.get_input_embeddings()(input_ids)
        B, N, C = input_embeds.shape
        flat = input_embeds.reshape(B * N, C)
        selected = input_ids.reshape(B * N) == self.img_context_token_id
        image_tokens = vit_embeds.reshape(-1, C).to(flat.device, flat.dtype)
        if int(selected.sum()) != image_tokens.shape[0]:
            raise ValueError(f"the prompt holds {int(selected.sum())} <IMG_CONTEXT> tokens but the images give "
                             f"{image_tokens.shape[0]} ({self.num_image_token} per tile): check num_patches_list")
        flat = flat.clone()
        flat[selected] = image_tokens
        return flat.reshape(B, N, C)

    def forward(
        self,
        pixel_values: torch.FloatTensor,
        input_ids: torch.LongTensor = None,
        attention_mask: Optional[torch.Tensor] = None,
        position_ids: Optional[torch.LongTensor] = None,
        image_flags: Optional[torch.LongTensor] = None,
        past_key_values=None,
        labels: Optional[torch.LongTensor] = None,
        use_cache: Optional[bool] = None,
        output_attentions: Optional[bool] = None,
        output_hidden_states: Optional[bool] = None,
        return_dict: Optional[bool] = None,
    ) -> Union[Tuple, CausalLMOutputWithPast]:
        """Training forward: logits (and the next-token loss when labels are given) for prompts holding images."""
        return_dict = return_dict if return_dict is not None else getattr(self.config, "return_dict", True)
        vit_embeds = self.extract_feature(pixel_values)
        if image_flags is not None:
            vit_embeds = vit_embeds[image_flags.squeeze(-1) == 1]
        input_embeds = self._merge_image_tokens(input_ids, vit_embeds)
        outputs = self.language_model(inputs_embeds=input_embeds, attention_mask=attention_mask,
                                      position_ids=position_ids, past_key_values=past_key_values,
                                      use_cache=use_cache, output_attentions=output_attentions,
                                      output_hidden_states=output_hidden_states, return_dict=True)
        logits = outputs.logits
        loss = None
        if labels is not None:
            shift_logits = logits[..., :-1, :].contiguous().view(-1, logits.shape[-1])
            shift_labels = labels[..., 1:].contiguous().view(-1).to(shift_logits.device)
            loss = CrossEntropyLoss()(shift_logits.float(), shift_labels)
        if not return_dict:
            output = (logits, outputs.past_key_values)
            return ((loss,) + output) if loss is not None else output
        return CausalLMOutputWithPast(loss=loss, logits=logits, past_key_values=outputs.past_key_values,
                                      hidden_states=outputs.hidden_states, attentions=outputs.attentions)

    # -- inference ----------------------------------------------------------------------------------
    @torch.no_grad()
    def generate(
        self,
        pixel_values: Optional[torch.FloatTensor] = None,
        input_ids: Optional[torch.LongTensor] = None,
        attention_mask: Optional[torch.LongTensor] = None,
        visual_features: Optional[torch.FloatTensor] = None,
        generation_config=None,
        output_hidden_states: Optional[bool] = None,
        **generate_kwargs,
    ) -> torch.LongTensor:
        """Generate from a prompt whose <IMG_CONTEXT> tokens are replaced by the image tokens; returns the new ids."""
        if pixel_values is not None or visual_features is not None:
            vit_embeds = visual_features if visual_features is not None else self.extract_feature(pixel_values)
            input_embeds = self._merge_image_tokens(input_ids, vit_embeds)
        else:
            input_embeds = self.language_model.get_input_embeddings()(input_ids)
        return self.language_model.generate(inputs_embeds=input_embeds, attention_mask=attention_mask,
                                            generation_config=generation_config,
                                            output_hidden_states=output_hidden_states, use_cache=True,
                                            **generate_kwargs)

    def _prompt(self, question: str, history: List[Tuple[str, str]]) -> Tuple[str, "object"]:
        """The full prompt for QUESTION after HISTORY, in this model's conversation template."""
        template = get_conv_template(self.template or "internlm2-chat")
        template.system_message = self.system_message
        for old_question, old_answer in history:
            template.append_message(template.roles[0], old_question)
            template.append_message(template.roles[1], old_answer)
        template.append_message(template.roles[0], question)
        template.append_message(template.roles[1], None)
        return template.get_prompt(), template

    def _image_tokens(self, num_patches: int, start: str, end: str, context: str) -> str:
        """The text that stands for one image of NUM_PATCHES tiles."""
        return start + context * (self.num_image_token * num_patches) + end

    def chat(self, tokenizer, pixel_values, question, generation_config, history=None, return_history=False,
             num_patches_list=None, IMG_START_TOKEN=IMG_START_TOKEN, IMG_END_TOKEN=IMG_END_TOKEN,
             IMG_CONTEXT_TOKEN=IMG_CONTEXT_TOKEN, verbose=False):
        """One chat turn: QUESTION (with '<image>' placeholders, added in front if missing) about PIXEL_VALUES."""
        if history is None and pixel_values is not None and "<image>" not in question:
            question = "<image>\n" + question
        if num_patches_list is None:
            num_patches_list = [pixel_values.shape[0]] if pixel_values is not None else []
        if pixel_values is not None and len(pixel_values) != sum(num_patches_list):
            raise ValueError(f"pixel_values has {len(pixel_values)} tiles but num_patches_list sums to "
                             f"{sum(num_patches_list)}")
        self.img_context_token_id = tokenizer.convert_tokens_to_ids(IMG_CONTEXT_TOKEN)
        history = [] if history is None else list(history)
        query, template = self._prompt(question, history)
        if verbose and pixel_values is not None:
            print(f"dynamic ViT batch size: {pixel_values.shape[0]}")
        for num_patches in num_patches_list:
            query = query.replace("<image>", self._image_tokens(num_patches, IMG_START_TOKEN, IMG_END_TOKEN,
                                                                IMG_CONTEXT_TOKEN), 1)
        model_inputs = tokenizer(query, return_tensors="pt")
        input_ids = model_inputs["input_ids"].to(self.device)
        attention_mask = model_inputs["attention_mask"].to(self.device)
        generation_config = dict(generation_config)
        generation_config["eos_token_id"] = tokenizer.convert_tokens_to_ids(template.sep.strip())
        if pixel_values is not None:
            pixel_values = pixel_values.to(self.device, self.vision_model.dtype)
        output = self.generate(pixel_values=pixel_values, input_ids=input_ids, attention_mask=attention_mask,
                               **generation_config)
        response = tokenizer.batch_decode(output, skip_special_tokens=True)[0]
        response = response.split(template.sep.strip())[0].strip()
        history.append((question, response))
        if verbose:
            shown = query.replace(IMG_CONTEXT_TOKEN * self.num_image_token, "<IMG_CONTEXT>*" + str(self.num_image_token))
            print(shown, response)
        return (response, history) if return_history else response

    def batch_chat(self, tokenizer, pixel_values, questions, generation_config, num_patches_list=None,
                   history=None, return_history=False, IMG_START_TOKEN=IMG_START_TOKEN, IMG_END_TOKEN=IMG_END_TOKEN,
                   IMG_CONTEXT_TOKEN=IMG_CONTEXT_TOKEN, verbose=False, image_counts=None):
        """One answer per question; question i is about num_patches_list[i] consecutive tiles of PIXEL_VALUES."""
        if history is not None or return_history:
            raise NotImplementedError("batch_chat answers single-turn questions; use chat() with history for dialogues")
        if num_patches_list is None:
            num_patches_list = [1] * len(questions) if pixel_values is not None else [0] * len(questions)
        if len(num_patches_list) != len(questions):
            raise ValueError(f"{len(questions)} questions but {len(num_patches_list)} entries in num_patches_list")
        self.img_context_token_id = tokenizer.convert_tokens_to_ids(IMG_CONTEXT_TOKEN)
        queries = []
        template = None
        for question, num_patches in zip(questions, num_patches_list):
            if pixel_values is not None and num_patches and "<image>" not in question:
                question = "<image>\n" + question
            query, template = self._prompt(question, [])
            if num_patches:
                query = query.replace("<image>", self._image_tokens(num_patches, IMG_START_TOKEN, IMG_END_TOKEN,
                                                                    IMG_CONTEXT_TOKEN), 1)
            queries.append(query)
        old_side = tokenizer.padding_side
        tokenizer.padding_side = "left"
        try:
            model_inputs = tokenizer(queries, return_tensors="pt", padding=True)
        finally:
            tokenizer.padding_side = old_side
        generation_config = dict(generation_config)
        generation_config["eos_token_id"] = tokenizer.convert_tokens_to_ids(template.sep.strip())
        if tokenizer.pad_token_id is not None:
            generation_config.setdefault("pad_token_id", tokenizer.pad_token_id)
        if pixel_values is not None:
            pixel_values = pixel_values.to(self.device, self.vision_model.dtype)
        output = self.generate(pixel_values=pixel_values, input_ids=model_inputs["input_ids"].to(self.device),
                               attention_mask=model_inputs["attention_mask"].to(self.device), **generation_config)
        responses = tokenizer.batch_decode(output, skip_special_tokens=True)
        return [r.split(template.sep.strip())[0].strip() for r in responses]


# save_pretrained copies these .py files next to the weights (XTuner's convert_to_official relies on it)
InternVLChatModel.register_for_auto_class("AutoModel")
