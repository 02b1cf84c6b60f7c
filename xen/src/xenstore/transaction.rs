//! Transactions: a consistent view and an all-or-nothing commit.
//!
//! xenstored gives each transaction a snapshot; at commit it checks whether anything the
//! transaction read or wrote changed meanwhile and, if so, refuses with `EAGAIN`: the caller
//! must redo the whole transaction from its first read. [`Xenstore::transaction`] does exactly
//! that, a bounded number of times with randomised exponential backoff. A [`Transaction`]
//! dropped without `commit`/`abort` is aborted (without waiting for the answer).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::wire::MsgType;
use super::{Perm, Xenstore, XsError};

/// Attempts [`Xenstore::transaction`] makes before returning the last `EAGAIN`.
pub const TRANSACTION_ATTEMPTS: u32 = 64;
/// First retry delay; doubles per conflict up to [`TRANSACTION_BACKOFF_MAX`], randomised.
const TRANSACTION_BACKOFF_MIN: Duration = Duration::from_millis(1);
/// Longest retry delay.
const TRANSACTION_BACKOFF_MAX: Duration = Duration::from_millis(50);

/// An open transaction. Its methods act inside it; nothing is visible to others until
/// [`Transaction::commit`] succeeds.
pub struct Transaction {
    pub(crate) client: Xenstore,
    pub(crate) id: u32,
    pub(crate) finished: bool,
}

impl std::fmt::Debug for Transaction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transaction").field("id", &self.id).finish()
    }
}

impl Transaction {
    /// xenstored's id for this transaction (the `tx_id` of its requests).
    pub fn id(&self) -> u32 {
        self.id
    }

    /// Read a node's value.
    pub async fn read(&self, path: &str) -> Result<Vec<u8>, XsError> {
        self.client.read_in(self.id, path).await
    }

    /// Read a node's value as UTF-8.
    pub async fn read_string(&self, path: &str) -> Result<String, XsError> {
        self.client.read_string_in(self.id, path).await
    }

    /// Read a node's value as UTF-8; `None` if the node does not exist.
    pub async fn try_read_string(&self, path: &str) -> Result<Option<String>, XsError> {
        self.client.try_read_string_in(self.id, path).await
    }

    /// Write a node (creating it and missing parents).
    pub async fn write(&self, path: &str, value: impl AsRef<[u8]>) -> Result<(), XsError> {
        self.client.write_in(self.id, path, value.as_ref()).await
    }

    /// Create a node with an empty value if it does not exist.
    pub async fn mkdir(&self, path: &str) -> Result<(), XsError> {
        self.client.mkdir_in(self.id, path).await
    }

    /// Remove a node and everything below it.
    pub async fn rm(&self, path: &str) -> Result<(), XsError> {
        self.client.rm_in(self.id, path).await
    }

    /// The names of a node's children.
    pub async fn directory(&self, path: &str) -> Result<Vec<String>, XsError> {
        self.client.directory_in(self.id, path).await
    }

    /// A node's permissions (owner first).
    pub async fn get_perms(&self, path: &str) -> Result<Vec<Perm>, XsError> {
        self.client.get_perms_in(self.id, path).await
    }

    /// Replace a node's permissions (owner first).
    pub async fn set_perms(&self, path: &str, perms: &[Perm]) -> Result<(), XsError> {
        self.client.set_perms_in(self.id, path, perms).await
    }

    /// Commit. A conflict with another change is an error with [`XsError::is_again`]: redo the
    /// whole transaction (or use [`Xenstore::transaction`], which does).
    pub async fn commit(mut self) -> Result<(), XsError> {
        self.finished = true;
        self.end("commit", b"T\0").await
    }

    /// Abort: discard everything written in the transaction.
    pub async fn abort(mut self) -> Result<(), XsError> {
        self.finished = true;
        self.end("abort", b"F\0").await
    }

    async fn end(&self, op: &'static str, payload: &[u8]) -> Result<(), XsError> {
        let what = format!("(transaction {})", self.id);
        self.client
            .conn
            .call(op, &what, MsgType::TransactionEnd, self.id, payload)
            .await?;
        Ok(())
    }
}

impl Drop for Transaction {
    fn drop(&mut self) {
        if !self.finished {
            self.client
                .conn
                .send_and_forget(MsgType::TransactionEnd, self.id, b"F\0");
        }
    }
}

impl Xenstore {
    /// Start a transaction.
    pub async fn transaction_start(&self) -> Result<Transaction, XsError> {
        let reply = self
            .conn
            .call("transaction_start", "", MsgType::TransactionStart, 0, b"\0")
            .await?;
        let id = std::str::from_utf8(super::wire::reply_string(&reply))
            .ok()
            .and_then(|s| s.parse::<u32>().ok())
            .filter(|&id| id != 0)
            .ok_or_else(|| XsError::BadReply {
                op: "transaction_start",
                path: String::new(),
                detail: format!("transaction id {:?}", String::from_utf8_lossy(&reply)),
            })?;
        Ok(Transaction {
            client: self.clone(),
            id,
            finished: false,
        })
    }

    /// Run `body` in a transaction and commit it. When the commit loses a conflict (`EAGAIN`),
    /// `body` runs again in a fresh transaction, up to [`TRANSACTION_ATTEMPTS`] times with
    /// randomised exponential backoff (1 ms doubling to 50 ms); after that the last `EAGAIN` is
    /// returned. An error from `body` aborts the transaction and is returned as is.
    ///
    /// ```no_run
    /// # async fn f(xs: envoy_xen::xenstore::Xenstore) -> Result<(), envoy_xen::xenstore::XsError> {
    /// xs.transaction(async |tx| {
    ///     let n: u32 = tx.try_read_string("/counter").await?.map_or(0, |s| s.parse().unwrap_or(0));
    ///     tx.write("/counter", (n + 1).to_string()).await
    /// })
    /// .await?;
    /// # Ok(()) }
    /// ```
    ///
    /// Inside a future that must be `Send` (`tokio::spawn`), write the body as
    /// `async move |tx| ...` (moving in clones of what it needs): with today's compiler, an async
    /// closure that borrows from its surroundings makes the enclosing future fail the `Send`
    /// check ("implementation of `Send` is not general enough").
    pub async fn transaction<T>(
        &self,
        mut body: impl AsyncFnMut(&Transaction) -> Result<T, XsError>,
    ) -> Result<T, XsError> {
        let mut delay = TRANSACTION_BACKOFF_MIN;
        let mut attempt = 1;
        loop {
            let tx = self.transaction_start().await?;
            // On error, dropping `tx` aborts it.
            let value = body(&tx).await?;
            match tx.commit().await {
                Ok(()) => return Ok(value),
                Err(e) if e.is_again() && attempt < TRANSACTION_ATTEMPTS => {
                    tokio::time::sleep(jittered(delay)).await;
                    delay = (delay * 2).min(TRANSACTION_BACKOFF_MAX);
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }
}

/// Somewhere in `[d/2, d)`, so competing retriers drift apart.
fn jittered(d: Duration) -> Duration {
    let noise = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|t| t.subsec_nanos())
        .unwrap_or(0);
    let half = d / 2;
    half + Duration::from_nanos(u64::from(noise) % (half.as_nanos() as u64).max(1))
}
