//! `duet template create | list | rm`: the template store (docs/snapshots.md).

use super::args::{Common, GuestArgs, Seccomp};
use super::run::boot;
use anyhow::bail;
use duet_monitor::outcome::Outcome;
use duet_monitor::template;
use std::path::PathBuf;
use std::time::Instant;

/// A template-store command.
#[derive(clap::Subcommand, Debug)]
pub enum TemplateCmd {
    /// Boot IMAGE, snapshot it at its `duet::snapshot_point()` as template NAME, stop it.
    Create {
        /// The template's name.
        name: String,
        /// The image.
        image: PathBuf,
        /// Template store (default: $XDG_DATA_HOME/duet/templates).
        #[arg(long, value_name = "DIR")]
        store: Option<PathBuf>,
        #[command(flatten)]
        guest: GuestArgs,
        /// The KVM device node.
        #[arg(
            long,
            value_name = "PATH",
            env = "DUET_KVM_DEVICE",
            default_value = "/dev/kvm"
        )]
        kvm_device: PathBuf,
        #[command(flatten)]
        seccomp: Seccomp,
    },
    /// List the templates.
    List {
        /// Template store (default: $XDG_DATA_HOME/duet/templates).
        #[arg(long, value_name = "DIR")]
        store: Option<PathBuf>,
    },
    /// Remove template NAME.
    Rm {
        /// The template's name.
        name: String,
        /// Template store (default: $XDG_DATA_HOME/duet/templates).
        #[arg(long, value_name = "DIR")]
        store: Option<PathBuf>,
    },
}

/// Runs a template-store command.
pub fn run(cmd: TemplateCmd, start: Instant) -> anyhow::Result<Outcome> {
    match cmd {
        TemplateCmd::Create {
            name,
            image,
            store,
            guest,
            kvm_device,
            seccomp,
        } => {
            let store = template::store(store.as_deref())?;
            let dir = template::new_path(&store, &name)?;
            let c = Common {
                api: None,
                trace_boot: false,
                kvm_device,
                stop_timeout: duet_monitor::signals::DEFAULT_STOP_TIMEOUT,
                wait_start: None,
                gdb: None,
                gdb_wait: true,
                core: None,
                seccomp,
            };
            seccomp.apply()?;
            match boot(image, guest, c, start, Some(dir))? {
                Outcome::Snapshotted(d) => {
                    eprintln!("duet: template `{name}` created in {d}");
                    Ok(Outcome::Exited(0))
                }
                Outcome::Exited(s) => bail!(
                    "the guest exited (status {s}) without reaching duet::snapshot_point(); no template was created"
                ),
                other => Ok(other),
            }
        }
        TemplateCmd::List { store } => {
            let store = template::store(store.as_deref())?;
            for t in template::list(&store)? {
                println!("{}\t{} KiB", t.name, t.bytes >> 10);
            }
            Ok(Outcome::Exited(0))
        }
        TemplateCmd::Rm { name, store } => {
            let store = template::store(store.as_deref())?;
            template::remove(&store, &name)?;
            Ok(Outcome::Exited(0))
        }
    }
}
