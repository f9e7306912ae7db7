//! `worker-cli template`: the prompt a GGUF model's chat template makes of a conversation.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use worker_tokenizer::{ChatContext, ChatMessage, ChatTemplate};

#[derive(clap::Args)]
pub struct Args {
    /// The GGUF model file (its tokenizer.chat_template is used).
    #[arg(long, env = "WORKER_MODEL")]
    model: PathBuf,
    /// A JSON file with an array of {"role", "content"} messages.
    #[arg(long, env = "WORKER_TEMPLATE_MESSAGES")]
    messages: PathBuf,
    /// Do not open the assistant's turn at the end.
    #[arg(long, env = "WORKER_TEMPLATE_NO_GENERATION_PROMPT")]
    no_generation_prompt: bool,
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    let file = worker_gguf::GgufFile::open(&args.model)
        .with_context(|| format!("cannot read {}", args.model.display()))?;
    let md = file.metadata();
    let template =
        ChatTemplate::from_gguf(md)?.context("the model has no tokenizer.chat_template")?;
    let tok = worker_tokenizer::from_gguf(md)?;
    let text_of = |id: Option<u32>| {
        id.and_then(|id| tok.token_text(id).ok())
            .unwrap_or("")
            .to_string()
    };
    let json = std::fs::read(&args.messages)
        .with_context(|| format!("cannot read {}", args.messages.display()))?;
    let messages: Vec<ChatMessage> =
        serde_json::from_slice(&json).context("messages must be an array of {role, content}")?;
    let ctx = ChatContext {
        add_generation_prompt: !args.no_generation_prompt,
        bos_token: text_of(tok.bos()),
        eos_token: text_of(tok.eos()),
        now: None,
        variables: Default::default(),
    };
    let prompt = template.render(&messages, &ctx)?;
    let mut out = std::io::stdout().lock();
    out.write_all(prompt.as_bytes())?;
    out.flush()?;
    Ok(())
}
