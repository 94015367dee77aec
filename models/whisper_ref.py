"""Reference Whisper front end and greedy decoder in numpy + onnxruntime,
for checking the converted ONNX files (and as the spec the Rust port
follows).

    python models/whisper_ref.py MODELS_DIR WAV...

MODELS_DIR holds whisper_encoder.onnx, whisper_decoder.onnx,
whisper_tokenizer.json and the vocabulary matrix (whisper_vocab_int8.npy,
whisper_vocab_scale.npy; see whisper_onnx.vocab).
"""
import json
import sys
import wave

import numpy as np

SAMPLE_RATE = 16000
N_FFT = 400
HOP = 160
N_MELS = 80
SOT, EOT, NO_TIMESTAMPS = 50257, 50256, 50362
MARGIN = 1000  # zero-padded frames after the audio (see shared/notes)


def mel_filters(sr=SAMPLE_RATE, n_fft=N_FFT, n_mels=N_MELS):
    """librosa.filters.mel(sr, n_fft, n_mels) with Slaney scale and norm."""
    fftfreqs = np.fft.rfftfreq(n=n_fft, d=1.0 / sr)
    min_mel, max_mel = 0.0, 45.245640471924965
    mels = np.linspace(min_mel, max_mel, n_mels + 2)
    f_sp = 200.0 / 3
    freqs = f_sp * mels
    min_log_hz, min_log_mel, logstep = 1000.0, 1000.0 / f_sp, np.log(6.4) / 27.0
    log_t = mels >= min_log_mel
    freqs[log_t] = min_log_hz * np.exp(logstep * (mels[log_t] - min_log_mel))
    fdiff = np.diff(freqs)
    ramps = freqs.reshape(-1, 1) - fftfreqs.reshape(1, -1)
    lower = -ramps[:-2] / fdiff[:-1].reshape(-1, 1)
    upper = ramps[2:] / fdiff[1:].reshape(-1, 1)
    weights = np.maximum(0, np.minimum(lower, upper))
    enorm = 2.0 / (freqs[2:n_mels + 2] - freqs[:n_mels])
    return (weights * enorm[:, np.newaxis]).astype(np.float32)


def log_mel(audio, frames):
    """Log-mel spectrogram [80, frames] of `audio` followed by zeros."""
    n = frames * HOP
    x = np.zeros(n, np.float32)
    x[: min(len(audio), n)] = audio[:n]
    x = np.pad(x, (N_FFT // 2, N_FFT // 2), mode="reflect")
    window = (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(N_FFT) / N_FFT)).astype(np.float32)
    idx = np.arange(N_FFT)[None, :] + HOP * np.arange(frames + 1)[:, None]
    spec = np.fft.rfft(x[idx] * window, axis=1)[:-1]  # drop the last frame like Whisper
    power = (np.abs(spec) ** 2).T  # [201, frames]
    mel = mel_filters() @ power
    log_spec = np.log10(np.maximum(mel, 1e-10))
    log_spec = np.maximum(log_spec, log_spec.max() - 8.0)
    return ((log_spec + 4.0) / 4.0).astype(np.float32)


def read_wav_16k(path):
    with wave.open(path) as w:
        assert w.getframerate() == SAMPLE_RATE and w.getnchannels() == 1 and w.getsampwidth() == 2
        return np.frombuffer(w.readframes(w.getnframes()), np.int16).astype(np.float32) / 32768.0


def byte_decoder():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs)}


class Tokenizer:
    def __init__(self, path):
        with open(path, encoding="utf-8") as f:
            tj = json.load(f)
        self.id_to_token = {v: k for k, v in tj["model"]["vocab"].items()}
        for t in tj.get("added_tokens", []):
            self.id_to_token[t["id"]] = t["content"]
        self.bd = byte_decoder()

    def decode(self, ids):
        text = "".join(self.id_to_token.get(i, "") for i in ids if i < EOT)
        return bytes(self.bd[c] for c in text if c in self.bd).decode("utf-8", errors="replace")


class Vocab:
    """The int8 vocabulary matrix (token lookup, logits projection) and the
    token ids greedy decoding masks (whisper_config.json)."""

    def __init__(self, models_dir):
        import os
        q = np.load(os.path.join(models_dir, "whisper_vocab_int8.npy"))
        self.scale = np.load(os.path.join(models_dir, "whisper_vocab_scale.npy"))
        self.e = q.astype(np.float32)
        with open(os.path.join(models_dir, "whisper_config.json")) as f:
            config = json.load(f)
        self.suppress = [i for i in config.get("suppress_ids", []) if i < len(self.scale)]
        self.suppress_begin = [i for i in config.get("suppress_ids_begin", []) if i < len(self.scale)]

    def embed(self, token):
        return (self.e[token] * self.scale[token])[None, None, :]

    def logits(self, hidden):
        return (hidden[0] @ self.e.T) * self.scale


def load(models_dir, threads=1, suffix=""):
    """(encoder, decoder, tokenizer, vocab) of a model directory; `suffix`
    picks the form ("" fp32, "_f16", "_int8")."""
    import os
    import onnxruntime as ort
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    enc = ort.InferenceSession(os.path.join(models_dir, f"whisper_encoder{suffix}.onnx"), opts)
    dec = ort.InferenceSession(os.path.join(models_dir, f"whisper_decoder{suffix}.onnx"), opts)
    return enc, dec, Tokenizer(os.path.join(models_dir, "whisper_tokenizer.json")), Vocab(models_dir)


def log_mel_whisper_padding(audio):
    """The [80, 3000] window OpenAI's and faster-whisper's transcribe() feed
    the encoder: log-mel of the audio (normalized over it and 30 s of
    zeros), the audio's frames only, then padded with 0.0 in the normalized
    domain — not the log-mel of zero samples that log_mel() and talkie use."""
    frames = len(audio) // HOP
    mel = log_mel(audio, frames + 3000)[:, :min(frames, 3000)]
    return np.pad(mel, ((0, 0), (0, 3000 - mel.shape[1])))


def repeat_len(tokens):
    """talkie's loop guard (speech/src/stt/whisper.rs): tokens to cut when
    a block of 4 or more repeats twice at the end, or one of 2-3 three
    times; None otherwise."""
    n = len(tokens)

    def block(L, k):
        return tokens[n - L:] == tokens[n - k * L:n - (k - 1) * L]
    for L in range(4, n // 2 + 1):
        if block(L, 2):
            return L
    for L in (2, 3):
        if n >= 3 * L and block(L, 2) and block(L, 3):
            return 2 * L
    return None


def decode(enc, dec, vocab, mel, steps, pick):
    """Run the encoder on `mel` [80, frames], then up to `steps` decoder
    steps after the prompt; `pick(logits, out)` gets each step's masked
    logits and the tokens so far and returns the next token, or None to
    stop (it may shorten `out`). Returns the tokens."""
    cross = enc.run(None, {"mel": mel[None]})
    n_layers = len(cross) // 2
    feeds = {}
    for i in range(n_layers):
        feeds[f"cross_k_{i}"], feeds[f"cross_v_{i}"] = cross[2 * i], cross[2 * i + 1]
        feeds[f"past_k_{i}"] = np.zeros((1, 0, cross[0].shape[2]), np.float32)
        feeds[f"past_v_{i}"] = np.zeros((1, 0, cross[0].shape[2]), np.float32)
    prompt = [SOT, NO_TIMESTAMPS]
    out = []
    for step in range(len(prompt) + steps):
        token = prompt[step] if step < len(prompt) else out[-1]
        feeds["embedding"] = vocab.embed(token)
        res = dec.run(None, feeds)
        logits = vocab.logits(res[0])
        for i in range(n_layers):
            feeds[f"past_k_{i}"], feeds[f"past_v_{i}"] = res[1 + 2 * i], res[2 + 2 * i]
        if step < len(prompt) - 1:
            continue
        logits[NO_TIMESTAMPS + 1:] = -np.inf  # timestamps
        logits[SOT:NO_TIMESTAMPS + 1] = -np.inf  # other specials
        logits[vocab.suppress] = -np.inf  # whisper_config.json
        if step == len(prompt) - 1:
            logits[vocab.suppress_begin] = -np.inf
        nxt = pick(logits, out)
        if nxt is None:
            break
        out.append(nxt)
    return out


def transcribe(enc, dec, tok, vocab, audio, max_tokens=96, mel=None):
    """Greedy transcript of 16 kHz `audio`; `mel` [80, frames] overrides the
    front end (log_mel of the audio + MARGIN zero frames)."""
    return tok.decode(transcribe_tokens(enc, dec, vocab, audio, max_tokens, mel)).strip()


def transcribe_tokens(enc, dec, vocab, audio, max_tokens=96, mel=None):
    """The tokens of transcribe()."""
    if mel is None:
        frames = min(3000, len(audio) // HOP + MARGIN)
        frames += frames % 2
        mel = log_mel(audio, frames)

    def greedy(logits, out):
        loop = repeat_len(out)
        if loop:
            del out[-loop:]
            return None
        nxt = int(np.argmax(logits))
        return None if nxt == EOT else nxt
    out = decode(enc, dec, vocab, mel, min(max_tokens, int(6 * len(audio) / SAMPLE_RATE) + 10), greedy)
    loop = repeat_len(out)
    if loop:
        del out[-loop:]
    return out


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    enc, dec, tok, vocab = load(sys.argv[1])
    for w in sys.argv[2:]:
        print(f"{w}\t{transcribe(enc, dec, tok, vocab, read_wav_16k(w))}", flush=True)


if __name__ == "__main__":
    main()
