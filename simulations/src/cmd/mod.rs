//! One module per subcommand.

pub mod features;
