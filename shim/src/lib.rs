//! libmtcpshim: the LD_PRELOAD layer. Not built yet: it lands with issue 4 and will only drive
//! `userstack`. Kept in the workspace so the layout is final.
