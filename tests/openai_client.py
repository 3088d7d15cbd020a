"""The official `openai` Python client against `spo serve` (run by tests/serve_judge.rs).

    python tests/openai_client.py http://127.0.0.1:PORT/v1 KEY
"""
import sys

import openai

base, key = sys.argv[1], sys.argv[2]
client = openai.OpenAI(base_url=base, api_key=key, max_retries=0)

models = client.models.list()
name = models.data[0].id
assert name, models

chat = client.chat.completions.create(model=name, messages=[{"role": "user", "content": "Hi"}], max_tokens=8, seed=1)
assert chat.choices[0].message.role == "assistant"
assert chat.choices[0].finish_reason in ("stop", "length"), chat
assert chat.usage.completion_tokens > 0 and chat.usage.total_tokens > chat.usage.completion_tokens, chat.usage

text = client.completions.create(model=name, prompt="Once upon a time", max_tokens=8, seed=2, n=2)
assert len(text.choices) == 2 and all(c.finish_reason in ("stop", "length") for c in text.choices), text

pieces, finishes = [], []
for chunk in client.chat.completions.create(model=name, messages=[{"role": "user", "content": "Hi"}], max_tokens=8,
                                            seed=1, stream=True):
    delta = chunk.choices[0].delta
    pieces.append(delta.content or "")
    if chunk.choices[0].finish_reason:
        finishes.append(chunk.choices[0].finish_reason)
assert "".join(pieces) == chat.choices[0].message.content, (pieces, chat.choices[0].message.content)
assert len(finishes) == 1, finishes

streamed = "".join(c.choices[0].text for c in client.completions.create(
    model=name, prompt="Once upon a time", max_tokens=8, seed=3, stream=True))
whole = client.completions.create(model=name, prompt="Once upon a time", max_tokens=8, seed=3).choices[0].text
assert streamed == whole, (streamed, whole)

try:
    client.completions.create(model=name, prompt="a", n=100)
    raise AssertionError("n = 100 was accepted")
except openai.BadRequestError as e:
    assert "between 1 and 16" in str(e), e

try:
    openai.OpenAI(base_url=base, api_key="wrong", max_retries=0).models.list()
    raise AssertionError("a wrong key was accepted")
except openai.AuthenticationError:
    pass

print("openai client: ok")
