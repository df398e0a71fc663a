//! What every client command takes.

use clap::Args;

/// The namespace option of the client commands.
#[derive(Args, Clone, Default)]
pub struct Common {
    /// Namespace (default: the kubeconfig context's, usually "default").
    #[arg(short = 'n', long, global = true)]
    pub namespace: Option<String>,
}
