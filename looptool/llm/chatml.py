"""LoopTool's own ChatML tool template, for ChatML models whose template renders no tools.

SmolLM2-135M-Instruct's template (the offline demo's policy) knows users and assistants only;
this one adds what Qwen2.5's does — tools in the system block, calls as ``<tool_call>`` JSON
blocks that vLLM's hermes parser reads, results as ``<tool_response>`` user turns — with the
same ChatML control tokens, so such a model is trained and served in the hermes syntax. The
tiny test models and the toy policy carry it too. Arguments render as a JSON object, as the
serving vLLM hands them to the template; a string is written as it is.

Its generation prompt ends with a single newline after ``assistant``: a tokenizer without
``<tool_call>`` as a token (SmolLM2's) then splits the prompt and a following call at the same
place, so the prompt's ids stay a prefix of the labelled conversation's (Qwen3's template, whose
prompt may end in ``\n\n``, does not have that property there).
"""

# How a conversation after the system block renders: the hermes call syntax, Qwen-style turns.
CONVERSATION_TEMPLATE = """{% elif messages[0].role == 'system' %}<|im_start|>system
{{ messages[0].content }}<|im_end|>
{% endif %}
{%- for message in messages %}
{%- if message.role == 'system' %}
{%- elif message.role == 'user' %}<|im_start|>user
{{ message.content }}<|im_end|>
{% elif message.role == 'assistant' %}<|im_start|>assistant
{% generation %}
{%- if message.content %}{{ message.content }}{% endif %}
{%- for tool_call in message.tool_calls or [] %}
{%- set call = tool_call.function if tool_call.function is defined else tool_call %}
{%- if not loop.first or message.content %}
{% endif %}<tool_call>
{"name": "{{ call.name }}", "arguments": {{ call.arguments | tojson if call.arguments is not string else call.arguments }}}
</tool_call>
{%- endfor %}<|im_end|>{% endgeneration %}{{ '\n' }}
{%- elif message.role == 'tool' %}<|im_start|>user
<tool_response>
{{ message.content }}
</tool_response><|im_end|>
{% endif %}
{%- endfor %}
{%- if add_generation_prompt %}<|im_start|>assistant
{% endif %}"""

CHAT_TEMPLATE = (
    """{%- if tools %}<|im_start|>system
{%- if messages[0].role == 'system' %}
{{ messages[0].content }}
{%- else %}
You are a helpful assistant.
{%- endif %}

# Tools

You may call one or more functions to assist with the user query.

You are provided with function signatures within <tools></tools> XML tags:
<tools>
{%- for tool in tools %}
{{ tool | tojson }}
{%- endfor %}
</tools>

For each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:
<tool_call>
{"name": <function-name>, "arguments": <args-json-object>}
</tool_call><|im_end|>
"""
    + CONVERSATION_TEMPLATE
)
