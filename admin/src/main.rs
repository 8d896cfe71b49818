//! `lodestone-admin`: certificates and tokens. See `lodestone-admin --help`.
//!
//! ```sh
//! lodestone-admin local init --dir .stack/certs   # all of what a local stack needs, once
//! lodestone-admin tls init --dir certs --host 127.0.0.1 --host localhost
//! lodestone-admin tls device --dir certs --id truck-7
//! lodestone-admin token create --file tokens.toml --name grafana --scope fleet:read --expires-days 90
//! lodestone-admin token list --file tokens.toml
//! lodestone-admin token revoke --file tokens.toml lt_0123456789abcdef
//! ```

use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use lodestone_admin::pki::Authority;
use lodestone_kit::auth::{Scope, TokenFile};

#[derive(Parser)]
#[command(name = "lodestone-admin", about = "Certificates and API tokens for Lodestone")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Certificates: a local CA and what it issues.
    #[command(subcommand)]
    Tls(Tls),
    /// API tokens (`Authorization: Bearer …`).
    #[command(subcommand)]
    Token(Token),
    /// MQTT passwords for devices that cannot hold a certificate (the bridge's
    /// `mqtt.passwords_path`): user name = device id, password = the secret printed once.
    #[command(subcommand)]
    DevicePassword(DevicePassword),
    /// Credentials of a stack on this machine.
    #[command(subcommand)]
    Local(Local),
}

#[derive(Subcommand)]
enum DevicePassword {
    /// Gives device ID a new password in FILE (created if missing; an older one of ID stops
    /// working) and prints it once on standard output: only its hash is kept.
    Create {
        #[arg(long)]
        file: PathBuf,
        #[arg(long)]
        id: String,
        /// Expires after this many days (never, when not given).
        #[arg(long)]
        expires_days: Option<u32>,
    },
    /// Lists the devices of FILE with their expiry. Never secrets.
    List {
        #[arg(long)]
        file: PathBuf,
    },
    /// Removes device ID's password from FILE; the bridge refuses it within a second (a session
    /// already connected lasts until it reconnects).
    Revoke {
        #[arg(long)]
        file: PathBuf,
        id: String,
    },
}

#[derive(Subcommand)]
enum Local {
    /// Makes, in DIR, a CA (ca.pem), a certificate for 127.0.0.1 and localhost (server.pem,
    /// server.key), a token file (tokens.toml) with an admin and a service token, and their
    /// secrets in admin.token and service.token. Does nothing when DIR already holds them.
    /// Prints the paths.
    Init {
        #[arg(long)]
        dir: PathBuf,
    },
}

#[derive(Subcommand)]
enum Tls {
    /// Creates the CA in DIR if it is not there yet, and a server certificate `server.pem`
    /// (`--name`) for the given hosts. Prints the paths.
    Init {
        #[arg(long)]
        dir: PathBuf,
        /// Host names and IP addresses the services answer on (repeat the flag).
        #[arg(long = "host", default_values = ["127.0.0.1", "localhost"])]
        hosts: Vec<String>,
        #[arg(long, default_value = "server")]
        name: String,
        #[arg(long, default_value_t = 825)]
        days: u32,
    },
    /// A device certificate `device-ID.pem` (id in the CN and in the SAN URI
    /// urn:lodestone:device:ID), issued by the CA in DIR.
    Device {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        id: String,
        #[arg(long, default_value_t = 825)]
        days: u32,
    },
    /// Revokes device ID's certificate (`device-ID.pem` in DIR): writes DIR/crl.pem anew. Give
    /// the bridge `mqtt.crl_path` and restart it.
    Revoke {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        id: String,
        /// How long the CRL is valid.
        #[arg(long, default_value_t = 30)]
        days: u32,
    },
}

#[derive(Subcommand)]
enum Token {
    /// Adds a token to FILE (created if missing) and prints its secret, `ID.SECRET`, once, on
    /// standard output: only its hash is kept.
    Create {
        #[arg(long)]
        file: PathBuf,
        /// What it is for, for people.
        #[arg(long, default_value = "")]
        name: String,
        /// admin, service, metrics, DATABASE:read, DATABASE:write (* for every database); repeat.
        #[arg(long = "scope", required = true)]
        scopes: Vec<String>,
        /// Expires after this many days (never, when not given).
        #[arg(long)]
        expires_days: Option<u32>,
        /// Also an AWS access key for the Timestream API: the id is the access key id and the
        /// secret the secret access key. The file then keeps the secret (SigV4 needs it).
        #[arg(long)]
        aws: bool,
    },
    /// Lists the tokens of FILE: id, name, scopes, expiry. Never secrets.
    List {
        #[arg(long)]
        file: PathBuf,
    },
    /// Removes token ID from FILE; services refuse it within a second.
    Revoke {
        #[arg(long)]
        file: PathBuf,
        id: String,
    },
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Local(Local::Init { dir }) => {
            let made = ["ca.pem", "server.pem", "server.key", "crl.pem", "tokens.toml", "admin.token", "service.token"];
            if made.iter().all(|name| dir.join(name).exists()) {
                eprintln!("{} already holds a stack's credentials; kept", dir.display());
            } else {
                lodestone_admin::Credentials::create(&dir)?;
            }
            for name in made {
                println!("{} {}", name, dir.join(name).display());
            }
        }
        Command::Tls(Tls::Init { dir, hosts, name, days }) => {
            let authority = Authority::open_or_create(&dir, days)?;
            let issued = authority.issue_server(&name, &hosts, days)?;
            println!("ca {}", authority.ca_path().display());
            println!("cert {}", issued.cert_path.display());
            println!("key {}", issued.key_path.display());
        }
        Command::Tls(Tls::Device { dir, id, days }) => {
            let authority = Authority::open_or_create(&dir, days)?;
            let issued = authority.issue_device(&id, 0, days)?;
            println!("cert {}", issued.cert_path.display());
            println!("key {}", issued.key_path.display());
        }
        Command::Tls(Tls::Revoke { dir, id, days }) => {
            let authority = Authority::open_or_create(&dir, days)?;
            let crl = authority.revoke(&dir.join(format!("device-{id}.pem")), days)?;
            println!("crl {}", crl.display());
        }
        Command::Token(Token::Create { file, name, scopes, expires_days, aws }) => {
            let scopes = scopes.iter().map(|s| s.parse::<Scope>()).collect::<Result<Vec<_>, _>>().map_err(anyhow::Error::msg)?;
            let mut tokens = TokenFile::read(&file)?;
            let expires = expires_days.map(|days| chrono::Utc::now() + chrono::Duration::days(i64::from(days)));
            let issued = if aws { tokens.issue_signing(&name, &scopes, expires) } else { tokens.issue(&name, &scopes, expires) };
            tokens.write(&file).with_context(|| format!("writing {}", file.display()))?;
            eprintln!("token {} created in {}; its secret is shown only now:", issued.entry.id, file.display());
            if let (true, Some((id, secret))) = (aws, issued.bearer.split_once('.')) {
                eprintln!("as AWS credentials: aws_access_key_id = {id}, aws_secret_access_key = {secret}");
            }
            println!("{}", issued.bearer);
        }
        Command::DevicePassword(DevicePassword::Create { file, id, expires_days }) => {
            // The id is an MQTT client id and a topic level: no empty one, no wildcards or separators.
            if id.is_empty() || id.chars().any(|c| "/+#$".contains(c) || c.is_whitespace() || c.is_control()) {
                bail!("device id {id:?} must be non-empty, without /, +, #, $ or spaces");
            }
            let mut passwords = TokenFile::read(&file)?;
            let expires = expires_days.map(|days| chrono::Utc::now() + chrono::Duration::days(i64::from(days)));
            let issued = passwords.issue_with_id(&id, "device", &[Scope::Device], expires);
            passwords.write(&file).with_context(|| format!("writing {}", file.display()))?;
            eprintln!("device {id} has a new MQTT password in {}; it is shown only now (user name: {id}):", file.display());
            println!("{}", issued.secret);
        }
        Command::DevicePassword(DevicePassword::List { file }) => {
            for device in TokenFile::read(&file)?.tokens {
                let expires = device.expires.map_or_else(|| "never".to_string(), |e| e.to_rfc3339());
                println!("{}	expires {}", device.id, expires);
            }
        }
        Command::DevicePassword(DevicePassword::Revoke { file, id }) => {
            let mut passwords = TokenFile::read(&file)?;
            if !passwords.revoke(&id) {
                bail!("{} has no password for device {id}", file.display());
            }
            passwords.write(&file)?;
            eprintln!("device {id}'s password revoked");
        }
        Command::Token(Token::List { file }) => {
            for token in TokenFile::read(&file)?.tokens {
                let expires = token.expires.map_or_else(|| "never".to_string(), |e| e.to_rfc3339());
                println!("{}\t{}\t{}\texpires {}", token.id, token.name, token.scopes.join(","), expires);
            }
        }
        Command::Token(Token::Revoke { file, id }) => {
            let mut tokens = TokenFile::read(&file)?;
            if !tokens.revoke(&id) {
                bail!("{} has no token {id}", file.display());
            }
            tokens.write(&file)?;
            eprintln!("token {id} revoked");
        }
    }
    Ok(())
}
