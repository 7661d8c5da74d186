//! ACME issuance (instant-acme), challenges and the certificate store. Built in the ACME issue; skeleton for now.
