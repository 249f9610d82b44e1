"""Prompt formats: how a problem's question becomes the exact text fed to the model.

Three styles, chosen in gin with `PromptFormat.style`:

* ``raw``: the question verbatim (HumanEval's function header, a user's own pre-formatted
  prompt). No shots, no instruction.
* ``plain``: few-shot "Question: ... / Answer: ..." blocks for base models (the paper's
  4-shot MATH prompts); the model continues after ``Answer:``.
* ``chat``: messages rendered by the tokenizer's chat template, for instruct models; shots
  become earlier user/assistant turns.

A `PromptFormat` field left at None takes the task's default (`TaskPromptDefaults`), so one
gin line such as ``PromptFormat.style = "chat"`` works for every task.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import gin

STYLES = ("raw", "plain", "chat")


@dataclasses.dataclass(frozen=True)
class Exemplar:
  """A worked example shown in few-shot prompts."""

  question: str
  solution: str


@gin.configurable(module="rest_jax.tasks")
@dataclasses.dataclass(frozen=True)
class PromptFormat:
  """What the user chose; None means "the task's default".

  Attributes:
    style: "raw", "plain" or "chat".
    num_shots: number of worked exemplars placed before the question.
    instruction: text placed before the question. By default only chat prompts carry the
      task's instruction (base models follow the shots instead).
    system: an optional system message (chat only).
    question_prefix, answer_prefix, separator: the plain style's labels and block separator.
    thinking: chat only, for templates with a thinking switch (Qwen3's `enable_thinking`):
      True opens the answer with a free `<think>` block, False with an empty one, so the
      model answers at once (short completions, the cheaper Generate). None: the template's
      own default (Qwen3: thinking on).
  """

  style: str | None = None
  num_shots: int | None = None
  instruction: str | None = None
  system: str | None = None
  question_prefix: str = "Question: "
  answer_prefix: str = "Answer:"
  separator: str = "\n\n"
  thinking: bool | None = None


@dataclasses.dataclass(frozen=True)
class TaskPromptDefaults:
  """A task's own prompt choices, used where the `PromptFormat` says None.

  `chat_question_template` and `chat_solution_template` wrap the question and the solution
  in chat turns; code tasks use them to put code in fenced blocks.
  """

  style: str = "plain"
  num_shots: int = 0
  instruction: str = ""
  chat_question_template: str = "{question}"
  chat_solution_template: str = "{solution}"


@dataclasses.dataclass(frozen=True)
class ResolvedPromptFormat:
  """A `PromptFormat` with every default filled in; renders prompts and completions."""

  style: str
  num_shots: int
  instruction: str
  system: str | None
  question_prefix: str
  answer_prefix: str
  separator: str
  chat_question_template: str
  chat_solution_template: str
  thinking: bool | None = None

  def render(self, question: str, exemplars: Sequence[Exemplar], tokenizer=None) -> str:
    """The exact prompt text for `question`, with the first `num_shots` exemplars."""
    shots = list(exemplars[: self.num_shots])
    if len(shots) < self.num_shots:
      raise ValueError(
          f"prompt format asks for {self.num_shots} shots, but only {len(exemplars)} "
          "exemplars are available")
    if self.style == "raw":
      return question
    if self.style == "plain":
      blocks = [f"{self.question_prefix}{s.question}\n{self.answer_prefix} {s.solution}"
                for s in shots]
      blocks.append(f"{self.question_prefix}{question}\n{self.answer_prefix}")
      if self.instruction:
        blocks.insert(0, self.instruction)
      return self.separator.join(blocks)
    # chat
    if tokenizer is None:
      raise ValueError("the 'chat' prompt style needs a tokenizer (its chat template renders "
                       "the prompt); pass tokenizer= to get_task")
    messages = []
    if self.system:
      messages.append({"role": "system", "content": self.system})
    for s in shots:
      messages.append({"role": "user", "content": self._user_content(s.question)})
      messages.append({"role": "assistant", "content": self._chat_solution(s.question, s.solution)})
    messages.append({"role": "user", "content": self._user_content(question)})
    if self.thinking is None:
      return tokenizer.apply_chat_template(messages, add_generation_prompt=True)
    template = getattr(tokenizer, "chat_template", None) or ""
    if "enable_thinking" not in template:
      raise ValueError(
          f"PromptFormat.thinking={self.thinking} needs a chat template with a thinking "
          f"switch (enable_thinking, as Qwen3's); the tokenizer's "
          f"({getattr(tokenizer, 'source', type(tokenizer).__name__) or 'no source'}) has none: "
          "leave PromptFormat.thinking unset")
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True,
                                         enable_thinking=self.thinking)

  def completion(self, question: str, solution: str) -> str:
    """The text a model should produce after the prompt to give `solution`.

    This is what human solutions become in the "SFT on human data" baseline.
    """
    if self.style == "plain":
      return " " + solution  # the prompt ends with "Answer:", the shots with "Answer: <sol>".
    if self.style == "chat":
      return self._chat_solution(question, solution)
    return solution

  def _user_content(self, question: str) -> str:
    body = self.chat_question_template.format(question=question)
    return f"{self.instruction}\n\n{body}" if self.instruction else body

  def _chat_solution(self, question: str, solution: str) -> str:
    return self.chat_solution_template.format(question=question, solution=solution)


def resolve_prompt_format(fmt: PromptFormat | None,
                          defaults: TaskPromptDefaults) -> ResolvedPromptFormat:
  """Fills the None fields of `fmt` from the task's `defaults` and checks the result."""
  fmt = fmt if fmt is not None else PromptFormat()
  style = fmt.style if fmt.style is not None else defaults.style
  if style not in STYLES:
    raise ValueError(f"unknown prompt style {style!r}; expected one of {STYLES}")
  num_shots = fmt.num_shots if fmt.num_shots is not None else (
      defaults.num_shots if style != "raw" else 0)
  if not isinstance(num_shots, int) or num_shots < 0:
    raise ValueError(f"num_shots must be a non-negative int, got {num_shots!r}")
  if fmt.instruction is not None:
    instruction = fmt.instruction
  else:
    instruction = defaults.instruction if style == "chat" else ""
  if fmt.thinking is not None and style != "chat":
    raise ValueError(f"PromptFormat.thinking={fmt.thinking} applies to the 'chat' style "
                     f"only (the style is {style!r})")
  if style == "raw" and (num_shots or instruction):
    raise ValueError("the 'raw' prompt style feeds the question verbatim: it takes no shots "
                     f"and no instruction (got num_shots={num_shots}, "
                     f"instruction={instruction!r})")
  return ResolvedPromptFormat(
      style=style,
      num_shots=num_shots,
      instruction=instruction,
      system=fmt.system,
      question_prefix=fmt.question_prefix,
      answer_prefix=fmt.answer_prefix,
      separator=fmt.separator,
      chat_question_template=defaults.chat_question_template,
      chat_solution_template=defaults.chat_solution_template,
      thinking=fmt.thinking,
  )
