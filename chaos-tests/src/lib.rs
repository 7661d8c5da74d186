//! Multi-node fault tests in network namespaces. Built in the chaos-tests issue; skeleton for now.
