//! What a network device counts, whichever transport it uses.

/// Counters of one device.
#[derive(Clone, Copy, Debug, Default)]
pub struct DeviceStats {
    /// Frames received.
    pub rx_frames: u64,
    /// Frames sent.
    pub tx_frames: u64,
    /// Receive hypercalls made (exits).
    pub rx_calls: u64,
    /// Send hypercalls made (exits).
    pub tx_calls: u64,
    /// Frames the host could not take (queue full) and the stack will resend.
    pub tx_dropped: u64,
}
