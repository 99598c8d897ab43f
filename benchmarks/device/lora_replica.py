"""A plain-PyTorch replica of notebook 04's tiny-cpu LoRA run, fast enough on a GPU to compare recipes over seeds.

Same model (the tiny, pre-trained ViT frozen), same plates data and prompt (the tokenizer's chat template, which
equals XTuner's), LoRA on every linear layer of the LLM (peft's initialisation), the projector trained, AdamW,
3 % linear warm-up then cosine to 0, gradient clipping at 1, batch 4, fp32; then greedy answers to the 120
held-out questions. It is not XTuner (data order and sampler differ), so it ranks recipes; the notebook's own
run is the measurement. Used for docs/gpu/lora-replica-tiny-h200.json (the tiny-cpu preset's comment):

    VARIANTS='[{"multiturn": true, "lr": 1e-3, "seed": 1}, {"seed": 1}]' python3 benchmarks/device/lora_replica.py

A variant overrides r=32, alpha=64, lr=2e-3, iters=600; keys: seed, bs, wd, constant (no cosine), full (train the
whole LLM instead of LoRA), cold (a random ViT), multiturn (every training image asked all three questions),
rephrase ("Answer with one colour/shape word"). Results go to $OUT/sweep.json.
"""
import json, math, os, random, sys, time
sys.path.insert(0, os.getcwd())
import torch, torch.nn as nn
from labsupport.datasets import plates
from labsupport.model import tinymodel
from labsupport.core.tiling import load_image
from transformers import AutoModel, AutoTokenizer
torch.backends.cuda.matmul.allow_tf32 = False; torch.backends.cudnn.allow_tf32 = False
dev = "cuda" if torch.cuda.is_available() else "cpu"
OUT = os.environ.get("OUT", "/tmp/out")
N_TRAIN = int(os.environ.get("N_TRAIN", 600))
task = plates.build_course_task("/tmp/plates", n_train=N_TRAIN, n_heldout=120, progress=False)
train = json.loads(task["train"].read_text()); held = json.loads(task["heldout"].read_text())
mdir = tinymodel.build_tiny_model("/tmp/tinyw")
cdir = tinymodel.build_tiny_model("/tmp/tinyc", pretrained_vision=False)
tok = AutoTokenizer.from_pretrained(mdir, trust_remote_code=True)
IMG = "<img>" + "<IMG_CONTEXT>" * 256 + "</img>"
def pix(rec):
    return load_image(task["root"] / rec["image"], max_num=1)[:1]
t = time.time()
PT = torch.cat([pix(r) for r in train]).to(dev); PH = torch.cat([pix(r) for r in held]).to(dev)
print("pixels", time.time() - t, flush=True)
REPHRASE = {"colour": ("Answer with one word.", "Answer with one colour word."), "shape": ("Answer with one word.", "Answer with one shape word.")}
def question(rec, rephrase):
    q = rec["conversations"][0]["value"]
    if rephrase and rec["meta"]["kind"] in REPHRASE:
        a, b = REPHRASE[rec["meta"]["kind"]]; q = q.replace(a, b).replace("请用一个词回答。", "请用一个颜色词回答。" if rec["meta"]["kind"] == "colour" else "请用一个形状词回答。")
    return q.replace("<image>", IMG)
def prompt_ids(rec, rephrase):
    text = tok.apply_chat_template([{"role": "user", "content": question(rec, rephrase)}], add_generation_prompt=True, tokenize=False)
    return tok(text, add_special_tokens=True)["input_ids"]
def encode(rec, rephrase, multiturn=False, rng=None):
    p = prompt_ids(rec, rephrase); a = tok(rec["conversations"][1]["value"] + "<|im_end|>", add_special_tokens=False)["input_ids"]
    ids, lab = p + a, [-100] * len(p) + a
    if multiturn:
        m = rec["meta"]; lang = m["lang"]
        others = [k for k in plates.KINDS if k != m["kind"]]; rng.shuffle(others)
        for k in others:
            q = plates.QUESTIONS[(k, lang)]; ans = plates.plates_answer(k, str(m[k]), lang)
            qi = tok("<|im_start|>user\n" + q + "<|im_end|><|im_start|>assistant\n", add_special_tokens=False)["input_ids"]
            ai = tok(ans + "<|im_end|>", add_special_tokens=False)["input_ids"]
            ids += qi + ai; lab += [-100] * len(qi) + ai
    return ids, lab
class LoRA(nn.Module):
    def __init__(self, base, r, alpha):
        super().__init__(); self.base = base; self.scale = alpha / r
        self.A = nn.Parameter(torch.empty(r, base.in_features)); nn.init.kaiming_uniform_(self.A, a=math.sqrt(5))
        self.B = nn.Parameter(torch.zeros(base.out_features, r))
    def forward(self, x):
        return self.base(x) + (x @ self.A.T @ self.B.T) * self.scale
def add_lora(module, r, alpha):
    for name, child in list(module.named_children()):
        if isinstance(child, nn.Linear): setattr(module, name, LoRA(child, r, alpha))
        else: add_lora(child, r, alpha)
def run(v):
    torch.manual_seed(v.get("seed", 0))
    m = AutoModel.from_pretrained(cdir if v.get("cold") else mdir, trust_remote_code=True, torch_dtype=torch.float32).to(dev)
    m.img_context_token_id = tok.convert_tokens_to_ids("<IMG_CONTEXT>")
    for p in m.parameters(): p.requires_grad_(False)
    if v.get("full"):
        for p in m.language_model.parameters(): p.requires_grad_(True)
    else:
        add_lora(m.language_model, v["r"], v["alpha"]); m.to(dev)
    for p in m.mlp1.parameters(): p.requires_grad_(True)
    params = [p for p in m.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=v["lr"], betas=(0.9, 0.999), weight_decay=v.get("wd", 0.0))
    iters = v["iters"]; warm = max(2, round(0.03 * iters))
    def lr_at(i):
        if i < warm: return v["lr"] * (1e-5 + (1 - 1e-5) * i / warm)
        if v.get("constant"): return v["lr"]
        return v["lr"] * 0.5 * (1 + math.cos(math.pi * (i - warm) / (iters - warm)))
    rng = random.Random(v.get("seed", 0)); enc = [encode(r, v.get("rephrase"), v.get("multiturn"), rng) for r in train]
    g = torch.Generator().manual_seed(v.get("seed", 0)); order = []
    bs = v.get("bs", 4); t0 = time.time(); losses = []
    m.train()
    for i in range(iters):
        if len(order) < bs: order += torch.randperm(len(train), generator=g).tolist()
        idx, order = order[:bs], order[bs:]
        L = max(len(enc[j][0]) for j in idx)
        ids = torch.tensor([enc[j][0] + [0] * (L - len(enc[j][0])) for j in idx], device=dev)
        lab = torch.tensor([enc[j][1] + [-100] * (L - len(enc[j][1])) for j in idx], device=dev)
        att = torch.tensor([[1] * len(enc[j][0]) + [0] * (L - len(enc[j][0])) for j in idx], device=dev)
        for gp in opt.param_groups: gp["lr"] = lr_at(i)
        out = m(pixel_values=PT[idx], input_ids=ids, attention_mask=att, image_flags=torch.ones(bs, 1, dtype=torch.long, device=dev), labels=lab)
        opt.zero_grad(); out.loss.backward(); torch.nn.utils.clip_grad_norm_(params, 1.0); opt.step()
        losses.append(out.loss.item())
    m.eval()
    # greedy decode, 6 tokens, batch of all held-out (left pad)
    P = [prompt_ids(r, v.get("rephrase")) for r in held]
    L = max(map(len, P)); pad = tok.pad_token_id or 2
    ids = torch.tensor([[pad] * (L - len(p)) + p for p in P], device=dev); att = torch.tensor([[0] * (L - len(p)) + [1] * len(p) for p in P], device=dev)
    gen = []
    with torch.no_grad():
        vit = m.extract_feature(PH)
        emb = m._merge_image_tokens(ids, vit)
        res = m.language_model.generate(inputs_embeds=emb, attention_mask=att, max_new_tokens=6, do_sample=False, eos_token_id=[tok.convert_tokens_to_ids("<|im_end|>"), 2], pad_token_id=pad)
    replies = tok.batch_decode(res, skip_special_tokens=True)
    per = {}
    for r, rep in zip(held, replies):
        per.setdefault(r["meta"]["kind"], []).append(plates.answer_matches(rep, r["meta"]))
    acc = {k: round(sum(x) / len(x), 3) for k, x in per.items()}
    allacc = round(sum(sum(x) for x in per.values()) / len(held), 3)
    res = {"v": v, "acc": allacc, "per_kind": acc, "loss_end": round(sum(losses[-20:]) / len(losses[-20:]), 3), "s": round(time.time() - t0, 1), "replies": replies[:6]}
    print(json.dumps(res, ensure_ascii=False), flush=True)
    return res
variants = json.loads(os.environ["VARIANTS"])
results = []
base = {"r": 32, "alpha": 64, "lr": 2e-3, "iters": 600}
for v in variants:
    results.append(run({**base, **v}))
    json.dump(results, open(f"{OUT}/sweep.json", "w"), ensure_ascii=False, indent=1)
