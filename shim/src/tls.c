/* The thread-locals every hook reads (see tls.rs), in the initial-exec TLS model: an access is a
 * load at a fixed offset from the thread pointer, where a thread-local of a shared library
 * otherwise takes a call of __tls_get_addr. The library is loaded with the program
 * (LD_PRELOAD), so its thread-locals are in the static TLS block. */

/* The re-entrancy guard's depth (guard.rs). */
__attribute__((tls_model("initial-exec"))) __thread unsigned int mtcp_guard_depth;
/* Between a wait of ours that returned events and the thread's next wait (runtime/wait.rs). */
__attribute__((tls_model("initial-exec"))) __thread unsigned char mtcp_in_loop;
