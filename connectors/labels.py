"""What the fields of each connector's exports are called in the subject's language, for the export bundle's
report.html and CSV headers (dsr/mail/readable.py). ``data.json`` keeps the systems' own names.

A table per connector type: a column path as the bundle flattens it (``properties.hs_note_body``,
``billing_details.address.city``) or one of its segments -> its label per language. Paths not listed are
labelled segment by segment (:data:`COMMON`, then a humanised name), so a new vendor field never breaks an
export; it only reads less well until it is added here.

Amounts: :data:`MINOR_UNITS` lists the connectors whose integer amounts are in the currency's smallest unit
(Stripe: 1250 = 12.50 EUR); the others give amounts in major units (WooCommerce: ``"12.50"``).
"""

from __future__ import annotations

__all__ = ["COMMON", "CONNECTOR_DATASETS", "FIELD_LABELS", "MINOR_UNITS", "UNWRAP"]

MINOR_UNITS = frozenset({"stripe"})
"""Connector types whose integer amounts count the currency's minor unit (cents)."""

UNWRAP = frozenset({"properties"})
"""Container segments left out of a label (HubSpot puts every field under ``properties``)."""

CONNECTOR_DATASETS: dict[str, frozenset[str]] = {
    "hubspot": frozenset({"contact", "notes", "deals", "tickets", "emails"}),
    "stripe": frozenset({"customer", "charges", "payment_intents", "invoices", "subscriptions", "payment_methods",
                         "checkout_sessions"}),
    "woocommerce": frozenset({"customer", "orders"}),
}
"""Which connector a system is, when its name is not the connector type (a system named ``crm``): by datasets."""

COMMON: dict[str, dict[str, str]] = {
    "fr": {
        "id": "Identifiant", "object": "Type d'objet", "email": "Adresse électronique", "name": "Nom",
        "first_name": "Prénom", "last_name": "Nom", "firstname": "Prénom", "lastname": "Nom",
        "phone": "Téléphone", "mobilephone": "Téléphone mobile", "company": "Société",
        "address": "Adresse", "address_1": "Adresse (ligne 1)", "address_2": "Adresse (ligne 2)",
        "line1": "Adresse (ligne 1)", "line2": "Adresse (ligne 2)", "city": "Ville", "state": "Région",
        "postcode": "Code postal", "postal_code": "Code postal", "zip": "Code postal", "country": "Pays",
        "billing": "Facturation", "billing_details": "Facturation", "shipping": "Livraison",
        "created": "Créé le", "createdate": "Créé le", "created_at": "Créé le", "createdAt": "Créé le",
        "updated": "Modifié le", "updated_at": "Modifié le", "updatedAt": "Modifié le",
        "lastmodifieddate": "Modifié le", "date_created": "Créé le", "date_created_gmt": "Créé le (horloge GMT)",
        "date_modified": "Modifié le", "date_modified_gmt": "Modifié le (horloge GMT)", "archived": "Archivé",
        "amount": "Montant", "total": "Total", "subtotal": "Sous-total", "currency": "Devise",
        "status": "Statut", "description": "Description", "metadata": "Métadonnées", "livemode": "Mode réel",
        "customer": "Client", "note": "Note", "type": "Type", "quantity": "Quantité", "price": "Prix",
        "subject": "Objet", "content": "Contenu", "language": "Langue", "website": "Site web",
    },
    "en": {
        "id": "Identifier", "object": "Object type", "email": "Email address", "name": "Name",
        "first_name": "First name", "last_name": "Last name", "firstname": "First name", "lastname": "Last name",
        "phone": "Phone", "mobilephone": "Mobile phone", "company": "Company",
        "address": "Address", "address_1": "Address (line 1)", "address_2": "Address (line 2)",
        "line1": "Address (line 1)", "line2": "Address (line 2)", "city": "City", "state": "State or region",
        "postcode": "Postcode", "postal_code": "Postcode", "zip": "Postcode", "country": "Country",
        "billing": "Billing", "billing_details": "Billing", "shipping": "Shipping",
        "created": "Created", "createdate": "Created", "created_at": "Created", "createdAt": "Created",
        "updated": "Updated", "updated_at": "Updated", "updatedAt": "Updated",
        "lastmodifieddate": "Updated", "date_created": "Created", "date_created_gmt": "Created (GMT clock)",
        "date_modified": "Updated", "date_modified_gmt": "Updated (GMT clock)", "archived": "Archived",
        "amount": "Amount", "total": "Total", "subtotal": "Subtotal", "currency": "Currency",
        "status": "Status", "description": "Description", "metadata": "Metadata", "livemode": "Live mode",
        "customer": "Customer", "note": "Note", "type": "Type", "quantity": "Quantity", "price": "Price",
        "subject": "Subject", "content": "Content", "language": "Language", "website": "Website",
    },
}
"""Segment labels every connector shares."""

FIELD_LABELS: dict[str, dict[str, dict[str, str]]] = {
    "hubspot": {
        "fr": {
            "hs_note_body": "Note", "hs_timestamp": "Date", "hs_createdate": "Créé le",
            "hs_lastmodifieddate": "Modifié le", "hubspot_owner_id": "Responsable (identifiant)",
            "hs_attachment_ids": "Pièces jointes (identifiants)", "hs_additional_emails": "Autres adresses",
            "salutation": "Civilité", "fax": "Fax", "jobtitle": "Fonction", "date_of_birth": "Date de naissance",
            "hs_language": "Langue", "lifecyclestage": "Étape du cycle de vie", "hs_lead_status": "Statut du prospect",
            "hs_email_optout": "Désinscrit des e-mails", "hs_analytics_source": "Origine du contact",
            "ip_city": "Ville (d'après l'adresse IP)", "ip_country": "Pays (d'après l'adresse IP)",
            "dealname": "Proposition", "dealstage": "Étape", "pipeline": "Pipeline", "closedate": "Date de clôture",
            "hs_pipeline": "Pipeline", "hs_pipeline_stage": "Étape", "hs_ticket_priority": "Priorité",
            "hs_ticket_category": "Catégorie", "source_type": "Canal", "hs_object_id": "Identifiant",
            "hs_email_direction": "Sens", "hs_email_status": "Statut", "hs_email_subject": "Objet",
            "hs_email_text": "Texte", "hs_email_html": "Texte (HTML)", "hs_email_headers": "En-têtes",
            "hs_email_from_email": "Expéditeur", "hs_email_to_email": "Destinataire",
        },
        "en": {
            "hs_note_body": "Note", "hs_timestamp": "Date", "hs_createdate": "Created",
            "hs_lastmodifieddate": "Updated", "hubspot_owner_id": "Owner (identifier)",
            "hs_attachment_ids": "Attachments (identifiers)", "hs_additional_emails": "Other addresses",
            "salutation": "Salutation", "fax": "Fax", "jobtitle": "Job title", "date_of_birth": "Date of birth",
            "hs_language": "Language", "lifecyclestage": "Lifecycle stage", "hs_lead_status": "Lead status",
            "hs_email_optout": "Unsubscribed from emails", "hs_analytics_source": "Original source",
            "ip_city": "City (from the IP address)", "ip_country": "Country (from the IP address)",
            "dealname": "Offer", "dealstage": "Stage", "pipeline": "Pipeline", "closedate": "Close date",
            "hs_pipeline": "Pipeline", "hs_pipeline_stage": "Stage", "hs_ticket_priority": "Priority",
            "hs_ticket_category": "Category", "source_type": "Channel", "hs_object_id": "Identifier",
            "hs_email_direction": "Direction", "hs_email_status": "Status", "hs_email_subject": "Subject",
            "hs_email_text": "Text", "hs_email_html": "Text (HTML)", "hs_email_headers": "Headers",
            "hs_email_from_email": "From", "hs_email_to_email": "To",
        },
    },
    "stripe": {
        "fr": {
            "amount_captured": "Montant encaissé", "amount_refunded": "Montant remboursé",
            "amount_paid": "Montant payé",
            "amount_due": "Montant dû", "amount_remaining": "Reste à payer", "amount_total": "Montant total",
            "amount_subtotal": "Sous-total", "amount_received": "Montant reçu", "captured": "Encaissé",
            "paid": "Payé", "refunded": "Remboursé", "receipt_email": "Adresse du reçu",
            "receipt_number": "Numéro de reçu", "receipt_url": "Lien du reçu",
            "payment_intent": "Tentative de paiement",
            "payment_method": "Moyen de paiement", "payment_method_details": "Moyen de paiement",
            "card": "Carte", "brand": "Marque", "last4": "4 derniers chiffres", "exp_month": "Mois d'expiration",
            "exp_year": "Année d'expiration", "funding": "Type de carte", "fingerprint": "Empreinte",
            "statement_descriptor": "Libellé sur le relevé", "calculated_statement_descriptor": "Libellé sur le relevé",
            "invoice": "Facture", "number": "Numéro", "preferred_locales": "Langues préférées",
            "invoice_prefix": "Préfixe des factures", "balance": "Solde", "delinquent": "Impayé",
            "default_source": "Source par défaut", "invoice_settings": "Paramètres de facturation",
            "default_payment_method": "Moyen de paiement par défaut", "start_date": "Début",
            "current_period_start": "Début de la période", "current_period_end": "Fin de la période",
            "canceled_at": "Annulé le", "ended_at": "Terminé le",
            "cancel_at_period_end": "Annulation en fin de période",
            "period_start": "Début de la période", "period_end": "Fin de la période", "due_date": "Échéance",
            "payment_status": "Statut du paiement", "customer_details": "Client", "shipping_details": "Livraison",
            "failure_code": "Code d'échec", "failure_message": "Motif de l'échec", "outcome": "Résultat",
            "risk_level": "Niveau de risque", "seller_message": "Message", "network_status": "Statut réseau",
            "hosted_invoice_url": "Lien de la facture", "invoice_pdf": "Facture (PDF)",
        },
        "en": {
            "amount_captured": "Amount captured", "amount_refunded": "Amount refunded", "amount_paid": "Amount paid",
            "amount_due": "Amount due", "amount_remaining": "Amount remaining", "amount_total": "Total amount",
            "amount_subtotal": "Subtotal", "amount_received": "Amount received", "captured": "Captured",
            "paid": "Paid", "refunded": "Refunded", "receipt_email": "Receipt address",
            "receipt_number": "Receipt number", "receipt_url": "Receipt link", "payment_intent": "Payment attempt",
            "payment_method": "Payment method", "payment_method_details": "Payment method",
            "card": "Card", "brand": "Brand", "last4": "Last 4 digits", "exp_month": "Expiry month",
            "exp_year": "Expiry year", "funding": "Card type", "fingerprint": "Fingerprint",
            "statement_descriptor": "Statement descriptor", "calculated_statement_descriptor": "Statement descriptor",
            "invoice": "Invoice", "number": "Number", "preferred_locales": "Preferred languages",
            "invoice_prefix": "Invoice prefix", "balance": "Balance", "delinquent": "Overdue",
            "default_source": "Default source", "invoice_settings": "Invoice settings",
            "default_payment_method": "Default payment method", "start_date": "Start",
            "current_period_start": "Period start", "current_period_end": "Period end",
            "canceled_at": "Cancelled", "ended_at": "Ended", "cancel_at_period_end": "Cancel at period end",
            "period_start": "Period start", "period_end": "Period end", "due_date": "Due date",
            "payment_status": "Payment status", "customer_details": "Customer", "shipping_details": "Shipping",
            "failure_code": "Failure code", "failure_message": "Failure reason", "outcome": "Outcome",
            "risk_level": "Risk level", "seller_message": "Message", "network_status": "Network status",
            "hosted_invoice_url": "Invoice link", "invoice_pdf": "Invoice (PDF)",
        },
    },
    "woocommerce": {
        "fr": {
            "number": "Numéro de commande", "order_key": "Clé de commande", "customer_id": "Client (identifiant)",
            "customer_ip_address": "Adresse IP", "customer_user_agent": "Navigateur",
            "customer_note": "Note du client", "payment_method": "Moyen de paiement",
            "payment_method_title": "Moyen de paiement", "transaction_id": "Transaction",
            "date_paid": "Payée le", "date_paid_gmt": "Payée le (horloge GMT)", "date_completed": "Terminée le",
            "date_completed_gmt": "Terminée le (horloge GMT)", "total_tax": "Taxes", "shipping_total": "Frais de port",
            "discount_total": "Remise", "line_items": "Articles", "shipping_lines": "Livraison",
            "username": "Identifiant de connexion", "role": "Rôle", "is_paying_customer": "Client payant",
            "avatar_url": "Avatar", "created_via": "Créée via", "prices_include_tax": "Prix TTC",
        },
        "en": {
            "number": "Order number", "order_key": "Order key", "customer_id": "Customer (identifier)",
            "customer_ip_address": "IP address", "customer_user_agent": "Browser",
            "customer_note": "Customer note", "payment_method": "Payment method",
            "payment_method_title": "Payment method", "transaction_id": "Transaction",
            "date_paid": "Paid", "date_paid_gmt": "Paid (GMT clock)", "date_completed": "Completed",
            "date_completed_gmt": "Completed (GMT clock)", "total_tax": "Tax", "shipping_total": "Shipping",
            "discount_total": "Discount", "line_items": "Items", "shipping_lines": "Shipping",
            "username": "Username", "role": "Role", "is_paying_customer": "Paying customer",
            "avatar_url": "Avatar", "created_via": "Created via", "prices_include_tax": "Prices include tax",
        },
    },
}
"""Per connector type: a path or a segment -> its label, per language."""
