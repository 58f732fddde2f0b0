//! How requests travel: round-robin over the shared connections (a stuck
//! one replaced), idempotent requests repeated on another connection, the
//! `*_once` requests sent exactly once, and `WAIT`-ending pipelines over the
//! connections kept for them (see the module docs of [`super`]).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use arc_swap::ArcSwap;

use super::error::not_sent;
use super::{Backend, Conn, RedisError, RedisHandle};

impl RedisHandle {
    /// One of the shared connections (cheap clone), round-robin, with its slot.
    pub(super) fn next_shared(&self) -> (usize, Arc<Conn>) {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.shared.len();
        (i, self.shared[i].load_full())
    }

    /// Replaces the connection in slot `i` with a fresh (lazy) one when `e`
    /// says its reconnect was refused at the handshake (`AUTH` failed, e.g.
    /// while a password is being rotated). redis-rs' `ConnectionManager`
    /// reconnects after I/O errors only, so it would otherwise return that
    /// error forever, even once Redis accepts the credentials again.
    pub(super) fn replace_if_stuck(
        &self,
        pool: &[ArcSwap<Conn>],
        i: usize,
        used: &Arc<Conn>,
        e: &redis::RedisError,
    ) {
        if e.kind() != redis::ErrorKind::AuthenticationFailed || i >= pool.len() {
            return;
        }
        let Backend::Single {
            client,
            manager_config,
            ..
        } = &*self.backend
        else {
            return;
        };
        if let Ok(fresh) = client
            .get_connection_manager_lazy(manager_config.clone())
            .map(Conn::Managed)
        {
            // Only if no other task replaced it meanwhile.
            pool[i].compare_and_swap(used, Arc::new(fresh));
        }
    }

    /// Runs `cmd` on a shared connection within the timeout.
    ///
    /// # Errors
    /// Fails on connection errors, command errors and timeouts.
    pub async fn query<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> Result<T, RedisError> {
        self.with_retry(|mut conn| async move { cmd.query_async(&mut conn).await })
            .await
    }

    /// Runs a command that must not run twice (e.g. `XADD`) on a shared
    /// connection within the timeout, never retried: redis-rs reports a
    /// connection lost with requests in flight the same way as one that was
    /// never written, so a retry could apply the command twice.
    ///
    /// # Errors
    /// Fails on connection errors, command errors and timeouts.
    pub async fn query_once<T: redis::FromRedisValue>(
        &self,
        cmd: &redis::Cmd,
    ) -> Result<T, RedisError> {
        self.once(|mut conn| async move { cmd.query_async(&mut conn).await })
            .await
    }

    /// Runs a pipeline that must not run twice on a shared connection within
    /// the timeout, never retried (see [`Self::query_once`]).
    ///
    /// # Errors
    /// Fails on connection errors, command errors and timeouts.
    pub async fn pipe_once<T: redis::FromRedisValue>(
        &self,
        pipe: &redis::Pipeline,
    ) -> Result<T, RedisError> {
        self.once(|mut conn| async move { pipe.query_async(&mut conn).await })
            .await
    }

    /// Runs a pipeline that ends with `WAIT` (`ACK_AFTER_REPLICAS`) and must
    /// not run twice, within the timeout, never retried (see
    /// [`Self::query_once`]), on a connection kept for such requests: the
    /// `WAIT` blocks its connection, and must not block the shared ones
    /// (see the module docs).
    ///
    /// # Errors
    /// Fails on connection errors, command errors and timeouts.
    pub async fn pipe_waited<T: redis::FromRedisValue>(
        &self,
        pipe: &redis::Pipeline,
    ) -> Result<T, RedisError> {
        if self.waited.is_empty() {
            return self.pipe_once(pipe).await;
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.waited.len();
        let used = self.waited[i].load_full();
        let result = tokio::time::timeout(self.timeout, async {
            let mut conn = Conn::clone(&used);
            pipe.query_async(&mut conn).await
        })
        .await
        .map_err(|_| RedisError::Timeout)?;
        if let Err(e) = &result {
            self.replace_if_stuck(&self.waited, i, &used, e);
        }
        result.map_err(RedisError::from)
    }

    /// Runs a pipeline on a shared connection within the timeout.
    ///
    /// # Errors
    /// Fails on connection errors, command errors and timeouts.
    pub async fn pipe<T: redis::FromRedisValue>(
        &self,
        pipe: &redis::Pipeline,
    ) -> Result<T, RedisError> {
        self.with_retry(|mut conn| async move { pipe.query_async(&mut conn).await })
            .await
    }

    /// Runs a Lua script (`EVALSHA`, loading it when Redis lacks it) on a
    /// shared connection within the timeout.
    ///
    /// # Errors
    /// Fails on connection errors, script errors and timeouts.
    pub async fn script<T: redis::FromRedisValue>(
        &self,
        inv: &redis::ScriptInvocation<'_>,
    ) -> Result<T, RedisError> {
        self.with_retry(|mut conn| async move { inv.invoke_async(&mut conn).await })
            .await
    }

    /// Runs a Lua script that must not run twice on a shared connection
    /// within the timeout, never retried (see [`Self::query_once`]).
    ///
    /// # Errors
    /// Fails on connection errors, script errors and timeouts.
    pub async fn script_once<T: redis::FromRedisValue>(
        &self,
        inv: &redis::ScriptInvocation<'_>,
    ) -> Result<T, RedisError> {
        self.once(|mut conn| async move { inv.invoke_async(&mut conn).await })
            .await
    }

    /// Runs `op` once on a shared connection within the timeout (the
    /// `*_once` requests: never retried).
    pub(super) async fn once<T, F, Fut>(&self, op: F) -> Result<T, RedisError>
    where
        F: FnOnce(Conn) -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<T>>,
    {
        let (i, used) = match &self.once {
            Some(once) => (usize::MAX, once.clone()),
            None => self.next_shared(),
        };
        let result = tokio::time::timeout(self.timeout, op(Conn::clone(&used)))
            .await
            .map_err(|_| RedisError::Timeout)?;
        if let Err(e) = &result {
            self.replace_if_stuck(&self.shared, i, &used, e);
        }
        result.map_err(RedisError::from)
    }

    /// Runs `op`, moving on to the next shared connection when one turns out
    /// to be dead (after Redis restarted, each connection learns it on its
    /// next use and reconnects in the background). Only for idempotent
    /// requests: a lost connection can also fail requests Redis already ran,
    /// so non-idempotent ones go through [`Self::query_once`].
    pub(super) async fn with_retry<T, F, Fut>(&self, op: F) -> Result<T, RedisError>
    where
        F: Fn(Conn) -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<T>>,
    {
        let deadline = tokio::time::Instant::now() + self.timeout;
        let mut attempts = 0;
        loop {
            attempts += 1;
            let (i, used) = self.next_shared();
            let result = tokio::time::timeout_at(deadline, op(Conn::clone(&used)))
                .await
                .map_err(|_| RedisError::Timeout)?;
            if let Err(e) = &result {
                self.replace_if_stuck(&self.shared, i, &used, e);
            }
            match result {
                Err(e) if attempts < self.shared.len() + 1 && not_sent(&e) => continue,
                other => return other.map_err(RedisError::from),
            }
        }
    }
}
