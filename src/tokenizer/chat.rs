//! Chat templates (Jinja, as shipped with checkpoints) rendered with minijinja.

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

/// One chat message, as in the OpenAI and TRL conversational layouts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// `system`, `user` or `assistant`.
    pub role: String,
    /// The text.
    pub content: String,
}

impl Message {
    /// A message with the given role.
    pub fn new(role: &str, content: &str) -> Self {
        Self { role: role.into(), content: content.into() }
    }
}

/// Instructions a chat template may run per rendering before it is stopped.
pub const TEMPLATE_FUEL: u64 = 1_000_000;

/// Renders `messages` with a Hugging Face chat template.
pub fn render(
    template: &str,
    messages: &[Message],
    add_generation_prompt: bool,
    bos: &str,
    eos: &str,
) -> Result<String> {
    let mut env = minijinja::Environment::new();
    // a template is data from a file: bound its work (a real one uses a few thousand)
    env.set_fuel(Some(TEMPLATE_FUEL));
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.add_function("raise_exception", |msg: String| -> Result<String, minijinja::Error> {
        Err(minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, msg))
    });
    env.add_template("chat", template).context("the chat template does not parse")?;
    let out = env
        .get_template("chat")?
        .render(minijinja::context! {
            messages => messages,
            add_generation_prompt => add_generation_prompt,
            bos_token => bos,
            eos_token => eos,
        })
        .context("rendering the chat template")?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHATML: &str = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

    #[test]
    fn chatml_renders_like_transformers() {
        let out = render(CHATML, &[Message::new("user", "Hi")], true, "", "").unwrap();
        assert_eq!(
            out,
            "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        );
    }

    #[test]
    fn a_template_that_never_ends_is_stopped() {
        let t = "{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}";
        let err = format!("{:#}", render(t, &[Message::new("user", "x")], false, "", "").unwrap_err());
        assert!(err.contains("fuel"), "{err}");
    }

    #[test]
    fn python_string_methods_work() {
        let t = "{{ messages[0]['content'].strip() }}";
        assert_eq!(render(t, &[Message::new("user", "  x  ")], false, "", "").unwrap(), "x");
    }
}
